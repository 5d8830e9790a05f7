// A small Prometheus client shaped like prometheus-cpp (not packaged in Debian 12): a Registry of
// metric families built with builders, counters / gauges / histograms whose hot-path updates are
// lock-free atomics, snapshots (MetricFamily) and the text exposition format 0.0.4.
//
//   auto registry = std::make_shared<metrics::Registry>();
//   auto& requests = metrics::BuildCounter().Name("x_requests_total").Help("...")
//                        .Register(*registry);
//   metrics::Counter& ok = requests.Add({{"status", "OK"}});   // keep the reference
//   ok.Increment();
//   std::string text = metrics::SerializeText(registry->Collect());
//
// Names are compile-time constants of the caller, so an invalid metric or label name is a
// programming error; it never throws or aborts: it is logged and the family (or metric) is
// returned detached, updated as usual but never exposed, so a scrape stays parseable.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace squeeze::metrics {

using Labels = std::map<std::string, std::string>;  // name -> value, sorted by name

enum class MetricType { kCounter, kGauge, kHistogram };

// Snapshot of one labelled metric (like prometheus-cpp's ClientMetric).
struct ClientMetric {
  struct Bucket {
    double upper_bound = 0;  // the `le` label; the last bucket is +Inf
    uint64_t cumulative_count = 0;
  };
  Labels labels;
  double value = 0;             // counter and gauge
  std::vector<Bucket> buckets;  // histogram, cumulative, ending with +Inf
  uint64_t sample_count = 0;    // histogram: equals the +Inf bucket
  double sample_sum = 0;        // histogram
};

struct MetricFamily {
  std::string name;
  std::string help;
  MetricType type = MetricType::kCounter;
  std::vector<ClientMetric> metric;
};

// Something an Exposer can scrape.
class Collectable {
 public:
  virtual ~Collectable() = default;
  virtual std::vector<MetricFamily> Collect() const = 0;
};

// Monotonic. Negative increments are ignored (a counter never goes down).
class Counter {
 public:
  static constexpr MetricType kType = MetricType::kCounter;
  void Increment(double value = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }
  ClientMetric Collect() const;

 private:
  std::atomic<double> value_{0.0};
};

class Gauge {
 public:
  static constexpr MetricType kType = MetricType::kGauge;
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double value = 1.0) { value_.fetch_add(value, std::memory_order_relaxed); }
  void Decrement(double value = 1.0) { value_.fetch_sub(value, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }
  ClientMetric Collect() const;

 private:
  std::atomic<double> value_{0.0};
};

// Upper bounds of the finite buckets (the +Inf bucket is implied).
using BucketBoundaries = std::vector<double>;

// Fixed buckets. Each observation touches one atomic bucket counter and the atomic sum; a
// snapshot's _count is the sum of the bucket counters it read, so buckets and _count always
// agree (the sum may trail by observations in flight).
class Histogram {
 public:
  static constexpr MetricType kType = MetricType::kHistogram;
  // Boundaries are sorted and deduplicated; non-finite ones are dropped.
  explicit Histogram(BucketBoundaries boundaries);
  void Observe(double value) { ObserveN(value, 1); }
  // `count` observations of the same `value` (e.g. a request's mean inter-token gap, once per
  // gap). NaN is ignored.
  void ObserveN(double value, uint64_t count);
  ClientMetric Collect() const;
  const std::vector<double>& boundaries() const { return bounds_; }

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1, last is +Inf
  std::atomic<double> sum_{0.0};
};

bool IsValidMetricName(std::string_view name);
bool IsValidLabelName(std::string_view name);

class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  const std::string& name() const { return name_; }
  MetricType type() const { return type_; }
  bool exposed() const { return exposed_; }
  virtual MetricFamily Collect() const = 0;

 protected:
  FamilyBase(std::string name, std::string help, MetricType type, Labels constant_labels,
             bool exposed)
      : name_(std::move(name)),
        help_(std::move(help)),
        type_(type),
        constant_labels_(std::move(constant_labels)),
        exposed_(exposed) {}
  // Merges the constant labels in; false (logged) when a label name is invalid.
  bool MergeLabels(const Labels& labels, Labels* merged) const;

  const std::string name_;
  const std::string help_;
  const MetricType type_;
  const Labels constant_labels_;
  const bool exposed_;
};

// All metrics of one name, one per label set. Add() takes a mutex; the returned reference stays
// valid as long as the Registry, so the hot path calls Add() once and keeps the reference.
template <typename T>
class Family final : public FamilyBase {
 public:
  Family(std::string name, std::string help, Labels constant_labels, bool exposed)
      : FamilyBase(std::move(name), std::move(help), T::kType, std::move(constant_labels),
                   exposed) {}

  // Returns the metric with these labels, creating it with `args` (Histogram: its
  // BucketBoundaries) the first time; later calls ignore `args`.
  template <typename... Args>
  T& Add(const Labels& labels, Args&&... args) {
    Labels merged;
    const bool valid = MergeLabels(labels, &merged);
    std::lock_guard<std::mutex> lock(mu_);
    if (!valid) {
      rejected_.push_back(std::make_unique<T>(std::forward<Args>(args)...));
      return *rejected_.back();
    }
    auto it = metrics_.find(merged);
    if (it == metrics_.end()) {
      it = metrics_.emplace(std::move(merged), std::make_unique<T>(std::forward<Args>(args)...))
               .first;
    }
    return *it->second;
  }

  MetricFamily Collect() const override {
    MetricFamily family{.name = name_, .help = help_, .type = type_};
    std::lock_guard<std::mutex> lock(mu_);
    family.metric.reserve(metrics_.size());
    for (const auto& [labels, metric] : metrics_) {
      family.metric.push_back(metric->Collect());
      family.metric.back().labels = labels;
    }
    return family;
  }

 private:
  mutable std::mutex mu_;
  std::map<Labels, std::unique_ptr<T>> metrics_;
  std::vector<std::unique_ptr<T>> rejected_;  // invalid label names: updated, never exposed
};

class Registry final : public Collectable {
 public:
  // Exposed families in registration order.
  std::vector<MetricFamily> Collect() const override;

  // Used by the builders. Registering an existing name with the same type returns that family;
  // an invalid name or a name taken by another type is logged and gets a detached family.
  template <typename T>
  Family<T>& AddFamily(const std::string& name, const std::string& help, const Labels& labels) {
    std::lock_guard<std::mutex> lock(mu_);
    bool exposed = CheckNewFamily(name, T::kType);
    if (exposed) {
      for (const auto& f : families_) {
        if (f->exposed() && f->name() == name) return static_cast<Family<T>&>(*f);
      }
    }
    families_.push_back(std::make_unique<Family<T>>(name, help, labels, exposed));
    return static_cast<Family<T>&>(*families_.back());
  }

 private:
  // Requires mu_. False (logged) when the family must be detached.
  bool CheckNewFamily(const std::string& name, MetricType type) const;

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_;
};

template <typename T>
class Builder {
 public:
  Builder& Name(std::string name) {
    name_ = std::move(name);
    return *this;
  }
  Builder& Help(std::string help) {
    help_ = std::move(help);
    return *this;
  }
  // Constant labels added to every metric of the family.
  Builder& Labels(metrics::Labels labels) {
    labels_ = std::move(labels);
    return *this;
  }
  Family<T>& Register(Registry& registry) { return registry.AddFamily<T>(name_, help_, labels_); }

 private:
  std::string name_;
  std::string help_;
  metrics::Labels labels_;
};

inline Builder<Counter> BuildCounter() { return {}; }
inline Builder<Gauge> BuildGauge() { return {}; }
inline Builder<Histogram> BuildHistogram() { return {}; }

// Prometheus text exposition format 0.0.4 (Content-Type below).
inline constexpr std::string_view kTextContentType = "text/plain; version=0.0.4; charset=utf-8";
std::string SerializeText(const std::vector<MetricFamily>& families);

}  // namespace squeeze::metrics
