# Squeeze server image (CPU backend). Build: docker build -t squeeze .
# Run:   docker run -p 50051:50051 -v squeeze-state:/var/lib/squeeze squeeze
FROM debian:12 AS build
WORKDIR /src
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN bash scripts/install_deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUEEZE_NO_CUDA=ON \
 && cmake --build build --target squeeze-server squeeze-cli make-test-model \
 && build/make-test-model --out=/opt/squeeze/test-model --corpus=tests/data/corpus.txt

FROM debian:12
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libgrpc++1.51 libprotobuf32 \
      libabsl20220623 libspdlog1.10 libopenblas0 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/build/squeeze-server /src/build/squeeze-cli /usr/local/bin/
COPY --from=build /opt/squeeze /opt/squeeze
COPY models /opt/squeeze/models
EXPOSE 50051 9400
VOLUME /var/lib/squeeze
# The bundled trained model when present, else the random-weight test model; override with --model.
ENTRYPOINT ["/bin/sh", "-c", "m=/opt/squeeze/models/squeeze-demo; [ -f $m/config.json ] || m=/opt/squeeze/test-model; exec squeeze-server --model=$m --address=0.0.0.0:50051 --state_dir=/var/lib/squeeze --log_json \"$@\"", "--"]
