#include "server/metrics_registry.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "spdlog/spdlog.h"

namespace squeeze::metrics {
namespace {

bool IsNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsNameChar(char c) { return IsNameStart(c) || (c >= '0' && c <= '9'); }

const char* TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// Go-compatible sample values: shortest round-trip decimal, +Inf / -Inf / NaN.
void AppendValue(double v, std::string* out) {
  if (std::isnan(v)) {
    *out += "NaN";
  } else if (std::isinf(v)) {
    *out += v > 0 ? "+Inf" : "-Inf";
  } else {
    char buf[32];
    auto [end, ec] = std::to_chars(buf, buf + sizeof(buf), v);
    out->append(buf, ec == std::errc() ? end : buf);
  }
}

// HELP text escapes backslash and newline; label values also escape the double quote.
void AppendEscaped(std::string_view s, bool quote, std::string* out) {
  for (char c : s) {
    if (c == '\\') {
      *out += "\\\\";
    } else if (c == '\n') {
      *out += "\\n";
    } else if (quote && c == '"') {
      *out += "\\\"";
    } else {
      *out += c;
    }
  }
}

// `name{labels[,le="bound"]} value\n`; the braces are omitted when there is no label.
void AppendSample(const std::string& name, std::string_view suffix, const Labels& labels,
                  const double* le, double value, std::string* out) {
  *out += name;
  *out += suffix;
  if (!labels.empty() || le != nullptr) {
    *out += '{';
    bool first = true;
    for (const auto& [k, v] : labels) {
      if (!first) *out += ',';
      first = false;
      *out += k;
      *out += "=\"";
      AppendEscaped(v, /*quote=*/true, out);
      *out += '"';
    }
    if (le != nullptr) {
      if (!first) *out += ',';
      *out += "le=\"";
      AppendValue(*le, out);
      *out += '"';
    }
    *out += '}';
  }
  *out += ' ';
  AppendValue(value, out);
  *out += '\n';
}

}  // namespace

bool IsValidMetricName(std::string_view name) {
  if (name.empty() || !(IsNameStart(name[0]) || name[0] == ':')) return false;
  return std::all_of(name.begin(), name.end(), [](char c) { return IsNameChar(c) || c == ':'; });
}

bool IsValidLabelName(std::string_view name) {
  if (name.empty() || !IsNameStart(name[0]) || name.starts_with("__")) return false;
  return std::all_of(name.begin(), name.end(), IsNameChar);
}

void Counter::Increment(double value) {
  if (!(value >= 0)) return;  // also drops NaN
  value_.fetch_add(value, std::memory_order_relaxed);
}

ClientMetric Counter::Collect() const { return ClientMetric{.value = Value()}; }

ClientMetric Gauge::Collect() const { return ClientMetric{.value = Value()}; }

Histogram::Histogram(BucketBoundaries boundaries) : bounds_(std::move(boundaries)) {
  std::erase_if(bounds_, [](double b) { return !std::isfinite(b); });
  std::sort(bounds_.begin(), bounds_.end());
  bounds_.erase(std::unique(bounds_.begin(), bounds_.end()), bounds_.end());
  counts_ = std::make_unique<std::atomic<uint64_t>[]>(bounds_.size() + 1);
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::ObserveN(double value, uint64_t count) {
  if (std::isnan(value) || count == 0) return;
  // First bucket whose upper bound is >= value (buckets are `le`, inclusive).
  const size_t bucket = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[bucket].fetch_add(count, std::memory_order_relaxed);
  sum_.fetch_add(value * static_cast<double>(count), std::memory_order_relaxed);
}

ClientMetric Histogram::Collect() const {
  ClientMetric m;
  m.buckets.reserve(bounds_.size() + 1);
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    m.buckets.push_back(
        {.upper_bound = i < bounds_.size() ? bounds_[i] : std::numeric_limits<double>::infinity(),
         .cumulative_count = cumulative});
  }
  m.sample_count = cumulative;
  m.sample_sum = sum_.load(std::memory_order_relaxed);
  return m;
}

bool FamilyBase::MergeLabels(const Labels& labels, Labels* merged) const {
  *merged = constant_labels_;
  for (const auto& [name, value] : labels) {
    if (!IsValidLabelName(name) || (type_ == MetricType::kHistogram && name == "le")) {
      spdlog::error("metric {}: invalid label name '{}'; this metric is not exposed", name_, name);
      return false;
    }
    (*merged)[name] = value;
  }
  return true;
}

bool Registry::CheckNewFamily(const std::string& name, MetricType type) const {
  if (!IsValidMetricName(name)) {
    spdlog::error("invalid metric name '{}'; this family is not exposed", name);
    return false;
  }
  for (const auto& f : families_) {
    if (f->exposed() && f->name() == name && f->type() != type) {
      spdlog::error("metric {} is already registered as a {}; the {} is not exposed", name,
                    TypeName(f->type()), TypeName(type));
      return false;
    }
  }
  return true;
}

std::vector<MetricFamily> Registry::Collect() const {
  std::vector<const FamilyBase*> families;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& f : families_) {
      if (f->exposed()) families.push_back(f.get());
    }
  }
  // Families are never removed, so the pointers outlive the registry lock.
  std::vector<MetricFamily> out;
  out.reserve(families.size());
  for (const FamilyBase* f : families) out.push_back(f->Collect());
  return out;
}

std::string SerializeText(const std::vector<MetricFamily>& families) {
  std::string out;
  for (const MetricFamily& family : families) {
    out += "# HELP ";
    out += family.name;
    out += ' ';
    AppendEscaped(family.help, /*quote=*/false, &out);
    out += "\n# TYPE ";
    out += family.name;
    out += ' ';
    out += TypeName(family.type);
    out += '\n';
    for (const ClientMetric& m : family.metric) {
      if (family.type != MetricType::kHistogram) {
        AppendSample(family.name, "", m.labels, nullptr, m.value, &out);
        continue;
      }
      for (const ClientMetric::Bucket& b : m.buckets) {
        AppendSample(family.name, "_bucket", m.labels, &b.upper_bound,
                     static_cast<double>(b.cumulative_count), &out);
      }
      AppendSample(family.name, "_sum", m.labels, nullptr, m.sample_sum, &out);
      AppendSample(family.name, "_count", m.labels, nullptr, static_cast<double>(m.sample_count),
                   &out);
    }
  }
  return out;
}

}  // namespace squeeze::metrics
