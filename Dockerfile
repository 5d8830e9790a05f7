# Squeeze server image, CPU backend (the GPU image is Dockerfile.cuda). scripts/build_images.sh
# builds both; by hand: docker build -t squeeze:0.1.0 .
# Run:   docker run -p 50051:50051 -p 9400:9400 -v squeeze-state:/var/lib/squeeze squeeze:0.1.0
ARG BASE=debian:12
FROM ${BASE} AS build
ARG JOBS=
WORKDIR /src
COPY scripts/install_deps.sh scripts/install_deps.sh
RUN SQUEEZE_DEPS=build bash scripts/install_deps.sh
COPY . .
RUN cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DSQUEEZE_NO_CUDA=ON \
 && cmake --build build --target squeeze-server squeeze-cli make-test-model ${JOBS:+-j ${JOBS}} \
 && build/make-test-model --out=/opt/squeeze/test-model --corpus=tests/data/corpus.txt

FROM ${BASE}
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends libgrpc++1.51 libprotobuf32 \
      libabsl20220623 libspdlog1.10 libopenblas0 libssl3 libcpp-httplib0.11 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 squeeze \
 && useradd --system --uid 10001 --gid 10001 --no-create-home squeeze \
 && mkdir -p /var/lib/squeeze && chown 10001:10001 /var/lib/squeeze
COPY --from=build /src/build/squeeze-server /src/build/squeeze-cli /usr/local/bin/
COPY --from=build /opt/squeeze /opt/squeeze
COPY models /opt/squeeze/models
USER 10001:10001
EXPOSE 50051 9400 8000
VOLUME /var/lib/squeeze
# The bundled trained model when present, else the random-weight test model; override with --model.
ENTRYPOINT ["/bin/sh", "-c", "m=/opt/squeeze/models/squeeze-demo; [ -f $m/config.json ] || m=/opt/squeeze/test-model; exec squeeze-server --model=$m --address=0.0.0.0:50051 --state_dir=/var/lib/squeeze --log_json \"$@\"", "--"]
