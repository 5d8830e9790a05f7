#include "server/tls.h"

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sys/stat.h>

#include <array>
#include <mutex>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "spdlog/spdlog.h"

namespace squeeze::server {
namespace {

// One consistent set of certificate, chain, key and client CAs.
struct Material {
  X509* cert = nullptr;
  STACK_OF(X509) * chain = nullptr;  // intermediates after the leaf in cert_file
  EVP_PKEY* key = nullptr;
  X509_STORE* client_ca = nullptr;  // null: clients are not asked for certificates

  Material() = default;
  Material(const Material&) = delete;
  Material& operator=(const Material&) = delete;
  ~Material() {
    X509_free(cert);
    sk_X509_pop_free(chain, X509_free);
    EVP_PKEY_free(key);
    X509_STORE_free(client_ca);
  }
};

std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no PEM data";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

absl::StatusOr<std::shared_ptr<Material>> LoadMaterial(const TlsFiles& f) {
  auto m = std::make_shared<Material>();
  const auto bad = [](const char* flag, const std::string& path, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " '", path, "': ", why));
  };
  BIO* bio = BIO_new_file(f.cert_file.c_str(), "r");
  if (bio == nullptr) return bad("--tls_cert_file", f.cert_file, "cannot be read");
  m->cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
  if (m->cert != nullptr) {
    m->chain = sk_X509_new_null();
    while (X509* extra = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr)) {
      sk_X509_push(m->chain, extra);
    }
    ERR_clear_error();  // the end of the file reads as an error
  }
  BIO_free(bio);
  if (m->cert == nullptr) {
    return bad("--tls_cert_file", f.cert_file, "not a PEM certificate: " + OpenSslError());
  }
  bio = BIO_new_file(f.key_file.c_str(), "r");
  if (bio == nullptr) return bad("--tls_key_file", f.key_file, "cannot be read");
  m->key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (m->key == nullptr) {
    return bad("--tls_key_file", f.key_file, "not a PEM private key: " + OpenSslError());
  }
  if (X509_check_private_key(m->cert, m->key) != 1) {
    ERR_clear_error();
    return bad("--tls_key_file", f.key_file,
               absl::StrCat("does not match the certificate in ", f.cert_file));
  }
  if (!f.client_ca_file.empty()) {
    m->client_ca = X509_STORE_new();
    if (X509_STORE_load_file(m->client_ca, f.client_ca_file.c_str()) != 1) {
      return bad("--tls_client_ca_file", f.client_ca_file,
                 "cannot be read as PEM certificates: " + OpenSslError());
    }
  }
  return m;
}

// What identifies a version of a file: rotations replace it (new inode) or rewrite it.
using Stamp = std::array<int64_t, 3>;
Stamp StampOf(const std::string& path) {
  struct stat st {};
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return {0, 0, 0};
  return {static_cast<int64_t>(st.st_ino), static_cast<int64_t>(st.st_size),
          static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

// The metrics server's certificate: the files' current contents, re-read when they change.
class ReloadingMaterial {
 public:
  explicit ReloadingMaterial(TlsFiles files) : files_(std::move(files)) {}

  std::shared_ptr<Material> Get() {
    std::lock_guard<std::mutex> lock(mu_);
    const absl::Time now = absl::Now();
    if (current_ && now < next_check_) return current_;
    next_check_ = now + absl::Seconds(files_.reload_seconds);
    const std::array<Stamp, 3> stamps = {StampOf(files_.cert_file), StampOf(files_.key_file),
                                         StampOf(files_.client_ca_file)};
    if (current_ && stamps == stamps_) return current_;
    auto loaded = LoadMaterial(files_);
    if (!loaded.ok()) {
      // Mid-rotation (key written, certificate not yet) or broken: keep serving the last good.
      spdlog::error("metrics TLS: keeping the previous certificate: {}",
                    std::string(loaded.status().message()));
      return current_;
    }
    if (current_) spdlog::info("metrics TLS: certificate reloaded from {}", files_.cert_file);
    stamps_ = stamps;
    current_ = std::move(*loaded);
    return current_;
  }

 private:
  const TlsFiles files_;
  std::mutex mu_;
  std::shared_ptr<Material> current_;
  std::array<Stamp, 3> stamps_{};
  absl::Time next_check_;
};

int UseCurrentCertificate(SSL* ssl, void* arg) {
  std::shared_ptr<Material> m = static_cast<ReloadingMaterial*>(arg)->Get();
  if (!m) return 0;  // fails the handshake
  if (SSL_use_certificate(ssl, m->cert) != 1 || SSL_use_PrivateKey(ssl, m->key) != 1 ||
      SSL_set1_chain(ssl, m->chain) != 1) {
    return 0;
  }
  if (m->client_ca != nullptr && SSL_set1_verify_cert_store(ssl, m->client_ca) != 1) return 0;
  return 1;
}

}  // namespace

absl::Status ValidateTlsFiles(const TlsFiles& f) {
  if (f.cert_file.empty() != f.key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert_file and --tls_key_file must be set together");
  }
  if (!f.enabled()) {
    if (!f.client_ca_file.empty()) {
      return absl::InvalidArgumentError(
          "--tls_client_ca_file needs --tls_cert_file and --tls_key_file (mutual TLS is TLS)");
    }
    return absl::OkStatus();
  }
  if (f.reload_seconds < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tls_reload_seconds must be >= 1 (got ", f.reload_seconds, ")"));
  }
  return LoadMaterial(f).status();
}

std::shared_ptr<grpc::ServerCredentials> GrpcServerCredentials(const TlsFiles& f) {
  using grpc::experimental::FileWatcherCertificateProvider;
  const unsigned interval = static_cast<unsigned>(f.reload_seconds);
  auto provider =
      f.client_ca_file.empty()
          ? std::make_shared<FileWatcherCertificateProvider>(f.key_file, f.cert_file, interval)
          : std::make_shared<FileWatcherCertificateProvider>(f.key_file, f.cert_file,
                                                             f.client_ca_file, interval);
  grpc::experimental::TlsServerCredentialsOptions options(provider);
  options.watch_identity_key_cert_pairs();
  if (f.client_ca_file.empty()) {
    options.set_cert_request_type(GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  } else {
    options.watch_root_certs();
    options.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  }
  return grpc::experimental::TlsServerCredentials(options);
}

std::function<bool(ssl_ctx_st&)> MetricsTlsSetup(const TlsFiles& files) {
  auto material = std::make_shared<ReloadingMaterial>(files);
  const bool verify_clients = !files.client_ca_file.empty();
  // The function owns `material`, which the SSL_CTX's callback points to: the exposer keeps the
  // function as long as its SSL_CTX.
  return [material, verify_clients](SSL_CTX& ctx) {
    if (!material->Get()) return false;
    SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
    SSL_CTX_set_cert_cb(&ctx, UseCurrentCertificate, material.get());
    if (verify_clients) {
      SSL_CTX_set_verify(&ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
    return true;
  };
}

}  // namespace squeeze::server
