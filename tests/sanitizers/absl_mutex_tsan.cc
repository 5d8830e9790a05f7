// ThreadSanitizer builds only (-DSQUEEZE_TSAN=ON links this into the engine): tells TSan about
// absl::Mutex. Debian's Abseil is a shared library built without TSan, so its lock and unlock are
// invisible and every access guarded by an absl::Mutex would be reported as a race. These
// definitions take the place of the library's for our code and for the other shared libraries
// (gRPC); the library's own are reached through dlsym(RTLD_NEXT). They add the annotations
// Abseil itself has in a TSan build of Abseil:
//  - a lock is acquired after the real lock returns and released before the real unlock starts;
//    what the real functions do in between is ignored;
//  - a wait (Await, CondVar::Wait*) releases the mutex before the real call and re-acquires it
//    after; inside the real call the thread does not hold the mutex as far as TSan knows;
//  - a Condition runs inside the real functions, in the waiting thread or in whichever thread
//    is unlocking the mutex, and always with the mutex really held: each Condition is wrapped so
//    that TSan sees the mutex held while it runs (else the condition's reads of guarded state
//    race with the writes made under the lock);
//  - the library's *WithTimeout functions call its *WithDeadline ones through the PLT, i.e. they
//    would reach these definitions a second time (a second release of a released mutex): the
//    timeouts here are turned into deadlines and never reach the library's *WithTimeout.
// Written for Abseil 20220623 (Debian 12: inline namespace debian3, one-word mutex state).
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"

namespace {

template <typename F>
F Real(const char* symbol) {
  void* f = dlsym(RTLD_NEXT, symbol);
  if (f == nullptr) {
    std::fprintf(stderr, "absl_mutex_tsan: %s not found\n", symbol);
    std::abort();
  }
  return reinterpret_cast<F>(f);
}

#define ABSL_NS "_ZN4absl7debian3"
#define REAL(type, name) static const auto real = Real<type>(ABSL_NS name)
#define REAL_CONST(type, name) static const auto real = Real<type>("_ZNK4absl7debian3" name)

// How the calling thread holds `mu` (it must hold it): TSan's flags for a shared or an exclusive
// hold. The mutex word's kMuWriter bit (0x8 in absl/synchronization/mutex.cc) is set while a
// writer holds it; Abseil reads the same bit to annotate its own waits.
unsigned HeldFlags(const absl::Mutex* mu) {
  static_assert(sizeof(absl::Mutex) == sizeof(std::atomic<intptr_t>));
  constexpr intptr_t kMuWriter = 0x8;
  const intptr_t word =
      reinterpret_cast<const std::atomic<intptr_t>*>(mu)->load(std::memory_order_relaxed);
  return (word & kMuWriter) != 0 ? 0u : unsigned{__tsan_mutex_read_lock};
}

// A Condition that Abseil evaluates with `mu` held (shared when `flags` has
// __tsan_mutex_read_lock), by the waiter or by a thread unlocking `mu`.
struct HeldCondition {
  const absl::Condition* cond;
  absl::Mutex* mu;
  unsigned flags;
};

bool EvalHeld(HeldCondition* c) {
  // Annotated as a try-lock: the evaluation is not an acquisition that the deadlock detector
  // should order against the locks the evaluating thread holds.
  const unsigned lock_flags = c->flags | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(c->mu, lock_flags);
  __tsan_mutex_post_lock(c->mu, lock_flags, 0);
  const bool result = c->cond->Eval();
  __tsan_mutex_pre_unlock(c->mu, c->flags);
  __tsan_mutex_post_unlock(c->mu, c->flags);
  return result;
}

// Around a real call that releases `mu` and re-acquires it before returning (`flags`: how the
// thread holds it).
template <typename Call>
auto Reacquire(absl::Mutex* mu, unsigned flags, Call call) {
  __tsan_mutex_pre_unlock(mu, flags);
  __tsan_mutex_post_unlock(mu, flags);
  auto result = call();
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
  return result;
}

// Around a real call that acquires `mu`, maybe first waiting for a condition.
template <typename Call>
auto Acquire(absl::Mutex* mu, unsigned flags, Call call) {
  __tsan_mutex_pre_lock(mu, flags);
  auto result = call();
  __tsan_mutex_post_lock(mu, flags, 0);
  return result;
}

// What the library's *WithTimeout functions wait until.
absl::Time DeadlineFromTimeout(absl::Duration timeout) { return absl::Now() + timeout; }

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

Mutex::~Mutex() {
  REAL(void (*)(Mutex*), "5MutexD1Ev");
  __tsan_mutex_destroy(this, __tsan_mutex_not_static);
  real(this);
}

void Mutex::Lock() {
  REAL(void (*)(Mutex*), "5Mutex4LockEv");
  Acquire(this, 0, [&] {
    real(this);
    return 0;
  });
}

void Mutex::Unlock() {
  REAL(void (*)(Mutex*), "5Mutex6UnlockEv");
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

bool Mutex::TryLock() {
  REAL(bool (*)(Mutex*), "5Mutex7TryLockEv");
  __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this, locked ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
  return locked;
}

void Mutex::ReaderLock() {
  REAL(void (*)(Mutex*), "5Mutex10ReaderLockEv");
  Acquire(this, __tsan_mutex_read_lock, [&] {
    real(this);
    return 0;
  });
}

bool Mutex::ReaderTryLock() {
  REAL(bool (*)(Mutex*), "5Mutex13ReaderTryLockEv");
  const unsigned flags = __tsan_mutex_read_lock | __tsan_mutex_try_lock;
  __tsan_mutex_pre_lock(this, flags);
  const bool locked = real(this);
  __tsan_mutex_post_lock(this,
                         locked ? flags : __tsan_mutex_read_lock | __tsan_mutex_try_lock_failed, 0);
  return locked;
}

void Mutex::ReaderUnlock() {
  REAL(void (*)(Mutex*), "5Mutex12ReaderUnlockEv");
  __tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock);
  real(this);
  __tsan_mutex_post_unlock(this, __tsan_mutex_read_lock);
}

void Mutex::LockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "5Mutex8LockWhenERKNS0_9ConditionE");
  HeldCondition held{&cond, this, 0};
  Acquire(this, 0, [&] {
    real(this, Condition(&EvalHeld, &held));
    return 0;
  });
}

bool Mutex::LockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Time),
       "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  HeldCondition held{&cond, this, 0};
  return Acquire(this, 0, [&] { return real(this, Condition(&EvalHeld, &held), deadline); });
}

bool Mutex::LockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  return LockWhenWithDeadline(cond, DeadlineFromTimeout(timeout));
}

void Mutex::ReaderLockWhen(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  HeldCondition held{&cond, this, __tsan_mutex_read_lock};
  Acquire(this, __tsan_mutex_read_lock, [&] {
    real(this, Condition(&EvalHeld, &held));
    return 0;
  });
}

bool Mutex::ReaderLockWhenWithDeadline(const Condition& cond, absl::Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Time),
       "5Mutex26ReaderLockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  HeldCondition held{&cond, this, __tsan_mutex_read_lock};
  return Acquire(this, __tsan_mutex_read_lock,
                 [&] { return real(this, Condition(&EvalHeld, &held), deadline); });
}

bool Mutex::ReaderLockWhenWithTimeout(const Condition& cond, absl::Duration timeout) {
  return ReaderLockWhenWithDeadline(cond, DeadlineFromTimeout(timeout));
}

// Await* evaluate the condition first with the mutex held (TSan knows it is), as the library
// does; only when it is false does the thread release the mutex and wait.
void Mutex::Await(const Condition& cond) {
  REAL(void (*)(Mutex*, const Condition&), "5Mutex5AwaitERKNS0_9ConditionE");
  if (cond.Eval()) return;
  const unsigned flags = HeldFlags(this);
  HeldCondition held{&cond, this, flags};
  Reacquire(this, flags, [&] {
    real(this, Condition(&EvalHeld, &held));
    return 0;
  });
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  REAL(bool (*)(Mutex*, const Condition&, absl::Time),
       "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  if (cond.Eval()) return true;
  const unsigned flags = HeldFlags(this);
  HeldCondition held{&cond, this, flags};
  return Reacquire(this, flags, [&] { return real(this, Condition(&EvalHeld, &held), deadline); });
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  return AwaitWithDeadline(cond, DeadlineFromTimeout(timeout));
}

void CondVar::Wait(Mutex* mu) {
  REAL(void (*)(CondVar*, Mutex*), "7CondVar4WaitEPNS0_5MutexE");
  Reacquire(mu, HeldFlags(mu), [&] {
    real(this, mu);
    return 0;
  });
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  REAL(bool (*)(CondVar*, Mutex*, absl::Time), "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  return Reacquire(mu, HeldFlags(mu), [&] { return real(this, mu, deadline); });
}

bool CondVar::WaitWithTimeout(Mutex* mu, absl::Duration timeout) {
  return WaitWithDeadline(mu, DeadlineFromTimeout(timeout));
}

// A Notification orders what happened before Notify() before the return of a wait that saw it;
// the library's waits return at once, without taking the mutex, when it is already notified.
void Notification::Notify() {
  REAL(void (*)(Notification*), "12Notification6NotifyEv");
  __tsan_release(this);
  real(this);
}

void Notification::WaitForNotification() const {
  REAL_CONST(void (*)(const Notification*), "12Notification19WaitForNotificationEv");
  real(this);
  __tsan_acquire(const_cast<Notification*>(this));
}

bool Notification::WaitForNotificationWithDeadline(absl::Time deadline) const {
  REAL_CONST(bool (*)(const Notification*, absl::Time),
             "12Notification31WaitForNotificationWithDeadlineENS0_4TimeE");
  const bool notified = real(this, deadline);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

bool Notification::WaitForNotificationWithTimeout(absl::Duration timeout) const {
  REAL_CONST(bool (*)(const Notification*, absl::Duration),
             "12Notification30WaitForNotificationWithTimeoutENS0_8DurationE");
  const bool notified = real(this, timeout);
  if (notified) __tsan_acquire(const_cast<Notification*>(this));
  return notified;
}

ABSL_NAMESPACE_END
}  // namespace absl
