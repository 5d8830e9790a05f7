#include "engine/common/sha256.h"

#include <openssl/evp.h>

#include "absl/strings/escaping.h"

namespace squeeze {

std::string Sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<const char*>(digest), len));
}

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) { EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr); }

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(const void* data, size_t n) { EVP_DigestUpdate(ctx_, data, n); }

Sha256::Digest Sha256::Final() {
  Digest d{};
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx_, d.data(), &len);
  EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
  return d;
}

}  // namespace squeeze
