// streamscore native kernels: the C++ core.
//
// This header is deliberately free of Python / nanobind headers so it can be
// compiled, tested and reused on its own (see ext/src/bindings.cpp for the
// thin Python binding and ext/_reference.py for the pure-Python twin).
//
// Every floating-point result produced here is *specified* by the exact
// sequence of IEEE-754 double operations written below; ext/_reference.py
// performs the same operations in the same order, so both backends give
// bit-identical results.  Do not reorder arithmetic, introduce FMA, or build
// with -ffast-math: the build uses -ffp-contract=off for exactly this reason.
// Any change to an expression here must be mirrored in ext/_reference.py.

#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

namespace streamscore {
namespace kernels {

// ---------------------------------------------------------------------------
// Feature hashing: 64-bit FNV-1a, seed folded into the offset basis.
//
//   h = 0xcbf29ce484222325 XOR seed
//   for each byte b of the UTF-8 encoding:  h = (h XOR b) * 0x100000001b3 mod 2^64
//   bucket = h mod n_buckets            (unsigned 64-bit modulo)
// ---------------------------------------------------------------------------

inline constexpr std::uint64_t kFnvOffsetBasis = 0xcbf29ce484222325ULL;
inline constexpr std::uint64_t kFnvPrime = 0x100000001b3ULL;

inline std::uint64_t fnv1a64(const char *data, std::size_t len,
                             std::uint64_t seed) noexcept {
    std::uint64_t h = kFnvOffsetBasis ^ seed;
    const auto *p = reinterpret_cast<const unsigned char *>(data);
    for (std::size_t i = 0; i < len; ++i) {
        h ^= static_cast<std::uint64_t>(p[i]);
        h *= kFnvPrime;
    }
    return h;
}

inline void check_n_buckets(std::int64_t n_buckets) {
    if (n_buckets < 1) {
        throw std::invalid_argument("n_buckets must be >= 1, got " +
                                    std::to_string(n_buckets));
    }
}

// Caller guarantees n_buckets >= 1 (see check_n_buckets).
inline std::int64_t hash_bucket(const char *data, std::size_t len,
                                std::int64_t n_buckets,
                                std::uint64_t seed) noexcept {
    const std::uint64_t h = fnv1a64(data, len, seed);
    return static_cast<std::int64_t>(h % static_cast<std::uint64_t>(n_buckets));
}

// ---------------------------------------------------------------------------
// Window moments and their merge.
//
// A Moments value summarises a multiset of doubles: count n, sum, mean, m2
// (sum of squared deviations from the mean), min and max.  merge() is Chan et
// al.'s pairwise update.  Only the values currently inside a window ever
// contribute to its result (nothing is subtracted on eviction), so there is
// no cancellation drift, m2 is never negative, and the result depends only on
// the window's contents (see SlidingWindow below).
// ---------------------------------------------------------------------------

struct Moments {
    std::int64_t n = 0;
    double sum = 0.0;
    double mean = 0.0;
    double m2 = 0.0;
    double min = 0.0;
    double max = 0.0;
};

inline Moments single(double x) noexcept {
    Moments m;
    m.n = 1;
    m.sum = x;
    m.mean = x;
    m.m2 = 0.0;
    m.min = x;
    m.max = x;
    return m;
}

// `a` holds the older values, `b` the newer ones.
inline Moments merge(const Moments &a, const Moments &b) noexcept {
    if (a.n == 0) return b;
    if (b.n == 0) return a;
    Moments r;
    r.n = a.n + b.n;
    const double na = static_cast<double>(a.n);
    const double nb = static_cast<double>(b.n);
    const double n = static_cast<double>(r.n);
    const double delta = b.mean - a.mean;
    r.sum = a.sum + b.sum;
    r.mean = a.mean + delta * (nb / n);
    r.m2 = (a.m2 + b.m2) + (delta * delta) * ((na * nb) / n);
    r.min = (b.min < a.min) ? b.min : a.min;
    r.max = (b.max > a.max) ? b.max : a.max;
    return r;
}

// The six statistics reported per row by update_many, in this order.
struct Stats {
    double count, sum, mean, min, max, var;
};

inline constexpr std::size_t kStatsWidth = 6;

inline Stats stats_of(const Moments &m) noexcept {
    constexpr double nan = std::numeric_limits<double>::quiet_NaN();
    if (m.n == 0) return Stats{0.0, 0.0, nan, nan, nan, nan};
    const double n = static_cast<double>(m.n);
    return Stats{n, m.sum, m.sum / n, m.min, m.max, m.m2 / n};
}

// floor(a / b) for b >= 1, without overflow.
inline std::int64_t floor_div(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t q = a / b;
    if ((a % b != 0) && (a < 0)) --q;
    return q;
}

// ---------------------------------------------------------------------------
// SlidingWindow: time-based window (ts - size_ms, ts] for one entity.
//
// Timestamps must be non-decreasing.  update(ts, v) appends (ts, v) and then
// evicts every item with item_ts <= ts - size_ms.
//
// Algorithm ("aligned two stacks"): time is cut into blocks
// [k*size, (k+1)*size).  A window ending in block k can only hold items of
// blocks k-1 and k.  Items of the current block k live in the *back* part,
// summarised by one running prefix aggregate (merged oldest to newest).
// Items of block k-1 live in the *front* part, which stores for every item the
// aggregate of that item and all newer front items (suffix aggregates, merged
// newest to oldest).  The window's aggregate is merge(front suffix of the
// oldest live item, back prefix).  Eviction only drops front items; when an
// update enters a new block the back part becomes the front part (suffix
// aggregates rebuilt once, O(1) amortised per item) or, if a whole block was
// skipped, everything is dropped.
//
// Because the split between front and back is a function of the timestamps
// alone, the aggregates (and therefore every floating-point result) are a
// function of (size_ms, window contents) only.  In particular restoring a
// window from state() is bit-exact.
// ---------------------------------------------------------------------------

class SlidingWindow {
public:
    explicit SlidingWindow(std::int64_t size_ms) : size_ms_(size_ms) {
        if (size_ms < 1) {
            throw std::invalid_argument("size_ms must be >= 1, got " +
                                        std::to_string(size_ms));
        }
    }

    // Equivalent to SlidingWindow(size_ms) followed by update(ts[i], values[i])
    // for every i.
    static SlidingWindow from_state(std::int64_t size_ms, const std::int64_t *ts,
                                    const double *values, std::size_t n) {
        SlidingWindow w(size_ms);
        w.update_many(ts, values, n, nullptr);
        return w;
    }

    std::int64_t size_ms() const noexcept { return size_ms_; }

    void update(std::int64_t ts, double value) {
        check_order(last_ts_or_min(), ts, 0, false);
        apply(ts, value);
    }

    // Applies every row; if `out` is not null it receives n rows of
    // kStatsWidth doubles [count, sum, mean, min, max, var], each taken after
    // its row was applied.  The whole batch is validated before anything is
    // mutated, so an invalid batch leaves the window unchanged.
    void update_many(const std::int64_t *ts, const double *values,
                     std::size_t n, double *out) {
        std::int64_t prev = last_ts_or_min();
        for (std::size_t i = 0; i < n; ++i) {
            check_order(prev, ts[i], i, true);
            prev = ts[i];
        }
        for (std::size_t i = 0; i < n; ++i) {
            apply(ts[i], values[i]);
            if (out != nullptr) {
                const Stats s = stats_of(aggregate());
                double *row = out + i * kStatsWidth;
                row[0] = s.count;
                row[1] = s.sum;
                row[2] = s.mean;
                row[3] = s.min;
                row[4] = s.max;
                row[5] = s.var;
            }
        }
    }

    Moments aggregate() const noexcept {
        if (f_head_ < f_ts_.size()) return merge(f_agg_[f_head_], b_agg_);
        return b_agg_;
    }

    Stats stats() const noexcept { return stats_of(aggregate()); }

    std::int64_t count() const noexcept {
        return static_cast<std::int64_t>(f_ts_.size() - f_head_) + b_agg_.n;
    }

    bool empty() const noexcept { return count() == 0; }

    double last() const noexcept {
        if (b_vals_.empty()) return std::numeric_limits<double>::quiet_NaN();
        return b_vals_.back();
    }

    // Live items, oldest first.
    void state(std::vector<std::int64_t> &ts, std::vector<double> &values) const {
        ts.assign(f_ts_.begin() + static_cast<std::ptrdiff_t>(f_head_), f_ts_.end());
        values.assign(f_vals_.begin() + static_cast<std::ptrdiff_t>(f_head_),
                      f_vals_.end());
        ts.insert(ts.end(), b_ts_.begin(), b_ts_.end());
        values.insert(values.end(), b_vals_.begin(), b_vals_.end());
    }

private:
    std::int64_t last_ts_or_min() const noexcept {
        if (!b_ts_.empty()) return b_ts_.back();
        return std::numeric_limits<std::int64_t>::min();
    }

    static void check_order(std::int64_t prev, std::int64_t ts, std::size_t i,
                            bool batch) {
        if (ts < prev) {
            std::string msg = "timestamps must be non-decreasing: got ts=" +
                              std::to_string(ts) + " after ts=" +
                              std::to_string(prev);
            if (batch) msg += " (row " + std::to_string(i) + ")";
            throw std::invalid_argument(msg);
        }
    }

    // ts - item_ts >= size_ms, exact for every int64 pair with item_ts <= ts.
    bool expired(std::int64_t item_ts, std::int64_t ts) const noexcept {
        return static_cast<std::uint64_t>(ts) - static_cast<std::uint64_t>(item_ts) >=
               static_cast<std::uint64_t>(size_ms_);
    }

    void clear_front() noexcept {
        f_ts_.clear();
        f_vals_.clear();
        f_agg_.clear();
        f_head_ = 0;
    }

    // The back part (block k) becomes the front part; block k-1 is expired.
    void flip() {
        clear_front();
        f_ts_.swap(b_ts_);
        f_vals_.swap(b_vals_);
        const std::size_t m = f_vals_.size();
        f_agg_.resize(m);
        Moments acc;
        for (std::size_t j = m; j-- > 0;) {
            acc = merge(single(f_vals_[j]), acc);
            f_agg_[j] = acc;
        }
        b_agg_ = Moments{};
    }

    void apply(std::int64_t ts, double value) {
        const std::int64_t block = floor_div(ts, size_ms_);
        if (!b_ts_.empty() && block != block_) {
            // block > block_ because timestamps are non-decreasing.
            if (block - 1 == block_) {
                flip();
            } else {
                clear_front();
                b_ts_.clear();
                b_vals_.clear();
                b_agg_ = Moments{};
            }
        }
        block_ = block;
        b_ts_.push_back(ts);
        b_vals_.push_back(value);
        b_agg_ = merge(b_agg_, single(value));
        // Items of the current block never expire; only front items can.
        while (f_head_ < f_ts_.size() && expired(f_ts_[f_head_], ts)) ++f_head_;
        if (f_head_ == f_ts_.size()) clear_front();
    }

    std::int64_t size_ms_;
    std::int64_t block_ = 0;
    // front part: items of the previous block, oldest first, with suffix aggregates
    std::vector<std::int64_t> f_ts_;
    std::vector<double> f_vals_;
    std::vector<Moments> f_agg_;
    std::size_t f_head_ = 0;
    // back part: items of the current block, oldest first, with prefix aggregate
    std::vector<std::int64_t> b_ts_;
    std::vector<double> b_vals_;
    Moments b_agg_;
};

// ---------------------------------------------------------------------------
// TumblingTable: tumbling-window aggregates for many entities (keys).
//
// The window of a timestamp is [start, start + size_ms) with
//     start = ts - floor_mod(ts, size_ms)        (floor_mod(a, b) in [0, b))
// so negative timestamps fall in the window below them (ts = -1, size 10 ->
// start -10).  A batch whose window start would be below INT64_MIN (only
// possible for ts < INT64_MIN + size_ms) is rejected before anything changes.
//
// Per key the table holds TumblingState {start, count, sum, min, max}; an
// empty state is {start, 0, 0.0, +inf, -inf}.  Row i of update_many does
// exactly, in this order:
//
//   if the key has no state or start > state.start:
//       state = {start, 0, 0.0, +inf, -inf}; mark dirty
//   if start < state.start:  late += 1          (row not applied)
//   else if has_value[i]:
//       count += 1; sum = sum + value;
//       if (value < min) min = value;  if (value > max) max = value;
//       mark dirty
//   out row i = [double(count), sum, count ? sum / double(count) : 0.0,
//                count ? min : 0.0, count ? max : 0.0]
//
// NaN values are not expected (the caller rejects them upstream); they would
// poison sum but never min/max, identically in both backends.
// "Dirty" keys are listed in first-dirtied order until take_dirty().
// ---------------------------------------------------------------------------

inline constexpr std::size_t kTumblingWidth = 5;
// load() accepts counts up to 2^53, where double(count) is still exact; the
// int64 count then cannot overflow in practice.
inline constexpr std::int64_t kMaxLoadedCount = std::int64_t{1} << 53;

struct TumblingState {
    std::int64_t start = 0;
    std::int64_t count = 0;
    double sum = 0.0;
    double min = std::numeric_limits<double>::infinity();
    double max = -std::numeric_limits<double>::infinity();
};

// floor(a mod b) for b >= 1: the result is in [0, b).
inline std::int64_t floor_mod(std::int64_t a, std::int64_t b) noexcept {
    std::int64_t r = a % b;
    if (r < 0) r += b;
    return r;
}

// 64-bit hash of a key for the table below (FNV-1a + a final avalanche so the
// low bits used for bucketing depend on every byte).
inline std::uint64_t key_hash(std::string_view key) noexcept {
    std::uint64_t h = fnv1a64(key.data(), key.size(), 0);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

class TumblingTable {
public:
    struct DirtyRow {
        std::string key;
        TumblingState state;
    };

    explicit TumblingTable(std::int64_t size_ms) : size_ms_(size_ms) {
        if (size_ms < 1) {
            throw std::invalid_argument("size_ms must be >= 1, got " +
                                        std::to_string(size_ms));
        }
    }

    std::int64_t size_ms() const noexcept { return size_ms_; }
    std::int64_t late() const noexcept { return late_; }
    std::size_t size() const noexcept { return entries_.size(); }
    std::size_t dirty_count() const noexcept { return dirty_.size(); }
    bool contains(std::string_view key) const noexcept {
        return find(key, key_hash(key)) != kNone;
    }

    // Throws std::invalid_argument (nothing mutated) if the window start of
    // some ts[i] is not representable.
    void check_starts(const std::int64_t *ts, std::size_t n) const {
        constexpr std::int64_t lo = std::numeric_limits<std::int64_t>::min();
        for (std::size_t i = 0; i < n; ++i) {
            // ts - floor_mod(ts, size) < INT64_MIN  <=>  ts < INT64_MIN + floor_mod
            if (ts[i] < lo + size_ms_ && ts[i] < lo + floor_mod(ts[i], size_ms_)) {
                throw std::invalid_argument(
                    "update_many(): ts[" + std::to_string(i) + "]=" + std::to_string(ts[i]) +
                    " has a window start below the int64 range");
            }
        }
    }

    // Applies rows 0..n-1 in order (see the block comment above); `out`
    // receives n rows of kTumblingWidth doubles.  The batch is validated
    // (check_starts) before anything is mutated.
    void update_many(const std::string_view *keys, const std::int64_t *ts,
                     const double *values, const bool *has_value, std::size_t n,
                     double *out) {
        check_starts(ts, n);
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t start = ts[i] - floor_mod(ts[i], size_ms_);
            const std::uint64_t h = key_hash(keys[i]);
            std::uint32_t e = find(keys[i], h);
            if (e == kNone) {
                e = insert(keys[i], h);
                reset(e, start);
            } else if (start > entries_[e].state.start) {
                reset(e, start);
            }
            TumblingState &st = entries_[e].state;
            if (start < st.start) {
                ++late_;
            } else if (has_value[i]) {
                const double v = values[i];
                st.count += 1;
                st.sum = st.sum + v;
                if (v < st.min) st.min = v;
                if (v > st.max) st.max = v;
                mark_dirty(e);
            }
            double *row = out + i * kTumblingWidth;
            if (st.count != 0) {
                const double c = static_cast<double>(st.count);
                row[0] = c;
                row[1] = st.sum;
                row[2] = st.sum / c;
                row[3] = st.min;
                row[4] = st.max;
            } else {
                row[0] = 0.0;
                row[1] = st.sum;
                row[2] = 0.0;
                row[3] = 0.0;
                row[4] = 0.0;
            }
        }
    }

    // Row indices of the first occurrence of every distinct key without state.
    std::vector<std::size_t> missing(const std::string_view *keys, std::size_t n) const {
        std::vector<std::size_t> rows;
        std::unordered_set<std::string_view> seen;
        for (std::size_t i = 0; i < n; ++i) {
            if (find(keys[i], key_hash(keys[i])) != kNone) continue;
            if (seen.insert(keys[i]).second) rows.push_back(i);
        }
        return rows;
    }

    // Installs state read from the store (not dirty).  Returns false, changing
    // nothing, if the key already has state.  count must be in [0, 2^53]; when
    // it is 0, min/max are normalised to +inf/-inf.
    bool load(std::string_view key, std::int64_t start, std::int64_t count, double sum,
              double min, double max) {
        if (count < 0 || count > kMaxLoadedCount) {
            throw std::invalid_argument("load(): count must be in [0, 2**53], got " +
                                        std::to_string(count));
        }
        const std::uint64_t h = key_hash(key);
        if (find(key, h) != kNone) return false;
        const std::uint32_t e = insert(key, h);
        TumblingState &st = entries_[e].state;
        st.start = start;
        st.count = count;
        st.sum = sum;
        if (count == 0) {
            st.min = std::numeric_limits<double>::infinity();
            st.max = -std::numeric_limits<double>::infinity();
        } else {
            st.min = min;
            st.max = max;
        }
        return true;
    }

    // State of every dirty key, in first-dirtied order; clears the dirty set.
    std::vector<DirtyRow> take_dirty() {
        std::vector<DirtyRow> rows;
        rows.reserve(dirty_.size());
        for (const std::uint32_t e : dirty_) {
            rows.push_back(DirtyRow{entries_[e].key, entries_[e].state});
            entries_[e].dirty = false;
        }
        dirty_.clear();
        return rows;
    }

    // Drops all held state; refuses (std::runtime_error) while keys are dirty.
    void clear() {
        if (!dirty_.empty()) {
            throw std::runtime_error("clear(): " + std::to_string(dirty_.size()) +
                                   " dirty key(s) not taken; call take_dirty() first");
        }
        entries_.clear();
        entries_.shrink_to_fit();
        slots_.clear();
        slots_.shrink_to_fit();
    }

private:
    static constexpr std::uint32_t kNone = 0xffffffffU;

    struct Entry {
        std::string key;
        std::uint64_t hash;
        TumblingState state;
        bool dirty;
    };

    // Open addressing with linear probing over `slots_` (entry index + 1,
    // 0 = empty; capacity a power of two, load factor <= 1/2).
    std::uint32_t find(std::string_view key, std::uint64_t h) const noexcept {
        if (slots_.empty()) return kNone;
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t s = static_cast<std::size_t>(h) & mask;; s = (s + 1) & mask) {
            const std::uint32_t v = slots_[s];
            if (v == 0) return kNone;
            const Entry &en = entries_[v - 1];
            if (en.hash == h && std::string_view(en.key) == key) return v - 1;
        }
    }

    std::uint32_t insert(std::string_view key, std::uint64_t h) {
        if (entries_.size() >= kNone - 1) throw std::length_error("TumblingTable: too many keys");
        if (2 * (entries_.size() + 1) > slots_.size()) grow();
        const auto e = static_cast<std::uint32_t>(entries_.size());
        entries_.push_back(Entry{std::string(key), h, TumblingState{}, false});
        place(e);
        return e;
    }

    void place(std::uint32_t e) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t s = static_cast<std::size_t>(entries_[e].hash) & mask;
        while (slots_[s] != 0) s = (s + 1) & mask;
        slots_[s] = e + 1;
    }

    void grow() {
        const std::size_t cap = slots_.empty() ? 16 : slots_.size() * 2;
        slots_.assign(cap, 0);
        for (std::uint32_t e = 0; e < entries_.size(); ++e) place(e);
    }

    void reset(std::uint32_t e, std::int64_t start) {
        entries_[e].state = TumblingState{};
        entries_[e].state.start = start;
        mark_dirty(e);
    }

    void mark_dirty(std::uint32_t e) {
        if (!entries_[e].dirty) {
            entries_[e].dirty = true;
            dirty_.push_back(e);
        }
    }

    std::int64_t size_ms_;
    std::int64_t late_ = 0;
    std::vector<Entry> entries_;
    std::vector<std::uint32_t> slots_;
    std::vector<std::uint32_t> dirty_;
};

// ---------------------------------------------------------------------------
// KeyedStates<State>: the string-keyed open-addressing index and dirty list
// shared by HoppingTable and SessionTable (same scheme as TumblingTable's,
// which keeps its own copy so its hot loop is untouched).
// ---------------------------------------------------------------------------

template <class State>
class KeyedStates {
public:
    static constexpr std::uint32_t kNone = 0xffffffffU;

    struct Entry {
        std::string key;
        std::uint64_t hash;
        State state;
        bool dirty;
    };

    std::size_t size() const noexcept { return entries_.size(); }
    std::size_t dirty_count() const noexcept { return dirty_.size(); }
    Entry &entry(std::uint32_t e) noexcept { return entries_[e]; }
    const Entry &entry(std::uint32_t e) const noexcept { return entries_[e]; }
    const std::vector<std::uint32_t> &dirty() const noexcept { return dirty_; }

    std::uint32_t find(std::string_view key, std::uint64_t h) const noexcept {
        if (slots_.empty()) return kNone;
        const std::size_t mask = slots_.size() - 1;
        for (std::size_t s = static_cast<std::size_t>(h) & mask;; s = (s + 1) & mask) {
            const std::uint32_t v = slots_[s];
            if (v == 0) return kNone;
            const Entry &en = entries_[v - 1];
            if (en.hash == h && std::string_view(en.key) == key) return v - 1;
        }
    }

    // A new entry with a default State (not dirty).
    std::uint32_t insert(std::string_view key, std::uint64_t h) {
        if (entries_.size() >= kNone - 1) throw std::length_error("table: too many keys");
        if (2 * (entries_.size() + 1) > slots_.size()) grow();
        const auto e = static_cast<std::uint32_t>(entries_.size());
        entries_.push_back(Entry{std::string(key), h, State{}, false});
        place(e);
        return e;
    }

    void mark_dirty(std::uint32_t e) {
        if (!entries_[e].dirty) {
            entries_[e].dirty = true;
            dirty_.push_back(e);
        }
    }

    // Clears the dirty set (after the caller has copied the dirty states).
    void clear_dirty() noexcept {
        for (const std::uint32_t e : dirty_) entries_[e].dirty = false;
        dirty_.clear();
    }

    // Row indices of the first occurrence of every distinct key without state.
    std::vector<std::size_t> missing(const std::string_view *keys, std::size_t n) const {
        std::vector<std::size_t> rows;
        std::unordered_set<std::string_view> seen;
        for (std::size_t i = 0; i < n; ++i) {
            if (find(keys[i], key_hash(keys[i])) != kNone) continue;
            if (seen.insert(keys[i]).second) rows.push_back(i);
        }
        return rows;
    }

    void clear() {
        if (!dirty_.empty()) {
            throw std::runtime_error("clear(): " + std::to_string(dirty_.size()) +
                                     " dirty key(s) not taken; call take_dirty() first");
        }
        entries_.clear();
        entries_.shrink_to_fit();
        slots_.clear();
        slots_.shrink_to_fit();
    }

private:
    void place(std::uint32_t e) noexcept {
        const std::size_t mask = slots_.size() - 1;
        std::size_t s = static_cast<std::size_t>(entries_[e].hash) & mask;
        while (slots_[s] != 0) s = (s + 1) & mask;
        slots_[s] = e + 1;
    }

    void grow() {
        const std::size_t cap = slots_.empty() ? 16 : slots_.size() * 2;
        slots_.assign(cap, 0);
        for (std::uint32_t e = 0; e < entries_.size(); ++e) place(e);
    }

    std::vector<Entry> entries_;
    std::vector<std::uint32_t> slots_;
    std::vector<std::uint32_t> dirty_;
};

// Timestamps accepted by HoppingTable and SessionTable: |ts| < 2^62, so that
// every difference of two timestamps and every window bound used below fits
// in an int64.  A batch with another ts is rejected before anything changes.
inline constexpr std::int64_t kMaxAbsTs = std::int64_t{1} << 62;

inline void check_ts_range(const std::int64_t *ts, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        if (ts[i] <= -kMaxAbsTs || ts[i] >= kMaxAbsTs) {
            throw std::invalid_argument("update_many(): ts[" + std::to_string(i) + "]=" +
                                        std::to_string(ts[i]) + " is outside (-2**62, 2**62)");
        }
    }
}

inline void check_param(std::int64_t v, std::int64_t lo, const char *name) {
    if (v < lo || v >= kMaxAbsTs) {
        throw std::invalid_argument(std::string(name) + " must be in [" + std::to_string(lo) +
                                    ", 2**62), got " + std::to_string(v));
    }
}

inline void check_loaded_count(std::int64_t count) {
    if (count < 0 || count > kMaxLoadedCount) {
        throw std::invalid_argument("load(): count must be in [0, 2**53], got " +
                                    std::to_string(count));
    }
}

// [count, sum, mean, min, max, var] of m, all 0.0 when m is empty.
inline void write_stats(const Moments &m, double *row) noexcept {
    if (m.n == 0) {
        for (std::size_t j = 0; j < kStatsWidth; ++j) row[j] = 0.0;
        return;
    }
    const Stats s = stats_of(m);
    row[0] = s.count;
    row[1] = s.sum;
    row[2] = s.mean;
    row[3] = s.min;
    row[4] = s.max;
    row[5] = s.var;
}

// ---------------------------------------------------------------------------
// HoppingTable: hopping windows of size_ms advancing by hop_ms, many keys.
//
// Buckets: b(ts) = floor(ts / hop).  Windows are [k*hop, k*hop + size) for
// every integer k (size = m * hop).  The window of an event is the one of
// those containing it that closes first: buckets [b - m + 1, b], i.e. times
// [end - size, end) with end = (b(ts) + 1) * hop.  (hop == size: tumbling.)
//
// Per key: `newest` (the newest applied ts) and the non-empty buckets, in
// ascending order, each a Moments value (values merged in application order).
// Row i, in order:
//
//   if the key has state and end(ts) + grace <= newest:        LATE
//       late += 1; report the window of newest: [b(newest) - m + 1, b(newest)]
//   else if has_value[i]:
//       bucket b(ts) = merge(bucket b(ts), single(value)); newest = max(newest, ts)
//       drop the buckets below floor((newest - grace) / hop) - m + 1 (no event
//       that is not late can need them); mark dirty; report [b - m + 1, b]
//   else: report [b - m + 1, b] (nothing changes)
//
// The report folds the window's buckets oldest to newest with merge() and
// writes [count, sum, mean, min, max, var] (all 0.0 for an empty window).
// ---------------------------------------------------------------------------

struct HopBucket {
    std::int64_t bucket;
    Moments m;
};

struct HoppingState {
    std::int64_t newest = 0;
    std::vector<HopBucket> buckets;  // ascending, non-empty
};

class HoppingTable {
public:
    struct DirtyRow {
        std::string key;
        HoppingState state;
    };

    HoppingTable(std::int64_t size_ms, std::int64_t hop_ms, std::int64_t grace_ms)
        : size_ms_(size_ms), hop_ms_(hop_ms), grace_ms_(grace_ms) {
        check_param(size_ms, 1, "size_ms");
        check_param(hop_ms, 1, "hop_ms");
        check_param(grace_ms, 0, "grace_ms");
        if (size_ms % hop_ms != 0) {
            throw std::invalid_argument("size_ms must be a multiple of hop_ms, got " +
                                        std::to_string(size_ms) + " and " +
                                        std::to_string(hop_ms));
        }
        if (size_ms + grace_ms >= kMaxAbsTs) {
            throw std::invalid_argument("size_ms + grace_ms must be below 2**62");
        }
        m_ = size_ms / hop_ms;
    }

    std::int64_t size_ms() const noexcept { return size_ms_; }
    std::int64_t hop_ms() const noexcept { return hop_ms_; }
    std::int64_t grace_ms() const noexcept { return grace_ms_; }
    std::int64_t late() const noexcept { return late_; }
    std::size_t size() const noexcept { return states_.size(); }
    std::size_t dirty_count() const noexcept { return states_.dirty_count(); }

    // `out` receives n rows of kStatsWidth doubles.  The batch is validated
    // (check_ts_range) before anything is mutated.
    void update_many(const std::string_view *keys, const std::int64_t *ts,
                     const double *values, const bool *has_value, std::size_t n,
                     double *out) {
        check_ts_range(ts, n);
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t b = floor_div(ts[i], hop_ms_);
            const std::int64_t end = (b + 1) * hop_ms_;
            const std::uint64_t h = key_hash(keys[i]);
            std::uint32_t e = states_.find(keys[i], h);
            double *row = out + i * kStatsWidth;
            if (e != States::kNone && end + grace_ms_ <= states_.entry(e).state.newest) {
                ++late_;
                const std::int64_t bn = floor_div(states_.entry(e).state.newest, hop_ms_);
                write_stats(fold(states_.entry(e).state, bn - m_ + 1, bn), row);
                continue;
            }
            if (has_value[i]) {
                if (e == States::kNone) {
                    e = states_.insert(keys[i], h);
                    states_.entry(e).state.newest = ts[i];
                }
                apply(states_.entry(e).state, b, ts[i], values[i]);
                states_.mark_dirty(e);
            }
            if (e == States::kNone) {
                write_stats(Moments{}, row);
            } else {
                write_stats(fold(states_.entry(e).state, b - m_ + 1, b), row);
            }
        }
    }

    std::vector<std::size_t> missing(const std::string_view *keys, std::size_t n) const {
        return states_.missing(keys, n);
    }

    // Installs state read from the store (not dirty).  Buckets must be
    // strictly ascending with counts in [1, 2^53].  Returns false, changing
    // nothing, if the key already has state.
    bool load(std::string_view key, std::int64_t newest, std::vector<HopBucket> buckets) {
        for (std::size_t j = 0; j < buckets.size(); ++j) {
            check_loaded_count(buckets[j].m.n);
            if (buckets[j].m.n == 0) {
                throw std::invalid_argument("load(): bucket counts must be >= 1");
            }
            if (j > 0 && buckets[j].bucket <= buckets[j - 1].bucket) {
                throw std::invalid_argument("load(): buckets must be strictly ascending");
            }
        }
        const std::uint64_t h = key_hash(key);
        if (states_.find(key, h) != States::kNone) return false;
        HoppingState &st = states_.entry(states_.insert(key, h)).state;
        st.newest = newest;
        st.buckets = std::move(buckets);
        return true;
    }

    std::vector<DirtyRow> take_dirty() {
        std::vector<DirtyRow> rows;
        rows.reserve(states_.dirty_count());
        for (const std::uint32_t e : states_.dirty()) {
            rows.push_back(DirtyRow{states_.entry(e).key, states_.entry(e).state});
        }
        states_.clear_dirty();
        return rows;
    }

    void clear() { states_.clear(); }

private:
    using States = KeyedStates<HoppingState>;

    void apply(HoppingState &st, std::int64_t b, std::int64_t ts, double value) {
        auto &bs = st.buckets;
        auto it = std::lower_bound(bs.begin(), bs.end(), b,
                                   [](const HopBucket &x, std::int64_t v) { return x.bucket < v; });
        if (it != bs.end() && it->bucket == b) {
            it->m = merge(it->m, single(value));
        } else {
            bs.insert(it, HopBucket{b, single(value)});
        }
        if (ts > st.newest) st.newest = ts;
        const std::int64_t keep = floor_div(st.newest - grace_ms_, hop_ms_) - m_ + 1;
        std::size_t drop = 0;
        while (drop < bs.size() && bs[drop].bucket < keep) ++drop;
        if (drop) bs.erase(bs.begin(), bs.begin() + static_cast<std::ptrdiff_t>(drop));
    }

    static Moments fold(const HoppingState &st, std::int64_t lo, std::int64_t hi) noexcept {
        Moments acc;
        for (const HopBucket &x : st.buckets) {
            if (x.bucket > hi) break;
            if (x.bucket >= lo) acc = merge(acc, x.m);
        }
        return acc;
    }

    std::int64_t size_ms_;
    std::int64_t hop_ms_;
    std::int64_t grace_ms_;
    std::int64_t m_ = 1;
    std::int64_t late_ = 0;
    States states_;
};

// ---------------------------------------------------------------------------
// SessionTable: gap-based sessions, many keys.
//
// Per key: the current session's `start`, the entity's `newest` applied ts,
// the session's Moments, and (half_life > 0) the decayed accumulators
// dsum = sum(v_i * w_i), dweight = sum(w_i) with w_i = 2^(-(newest - t_i) / half_life).
// decay(dt) is exactly exp2(-(double(dt) / double(half_life))).
// Row i, in order (T: the time the row is reported at):
//
//   no state:   has -> state = {ts, ts, single(v), v, 1.0}; mark dirty
//               report the new session, or an empty row without a value
//   ts < start: LATE: late += 1; not applied; report the session, T = newest,
//               since omitted
//   ts >= newest, ts - newest >= gap (the session has ended):
//               has -> a new session {ts, ts, single(v), v, 1.0}; mark dirty;
//               report it; without a value report an empty row;
//               since = ts - newest (the previous applied event)
//   ts >= newest, ts - newest < gap (continues):
//               f = decay(ts - newest)
//               has -> moments = merge(moments, single(v)); dsum = dsum * f + v;
//                      dweight = dweight * f + 1.0; newest = ts; mark dirty
//               report T = ts, since = ts - newest before the row; without a
//               value the decayed sum is reported as dsum * f
//   start <= ts < newest (out of order, inside the session):
//               has -> f = decay(newest - ts); moments = merge(moments, single(v));
//                      dsum = dsum + v * f; dweight = dweight + f; mark dirty
//               report T = newest, since omitted
//
// A row is [count, sum, mean, min, max, var, since, duration, decay_sum,
// decay_mean]: the session's statistics (write_stats), since (NaN: omitted),
// duration = T - start, and the decayed sum and mean = dsum / dweight at T.
// An empty row is zeros with `since` as above.  With half_life 0 the decay
// columns are 0.0 and the accumulators are not maintained.
// ---------------------------------------------------------------------------

inline constexpr std::size_t kSessionWidth = 10;

struct SessionState {
    std::int64_t start = 0;
    std::int64_t newest = 0;
    Moments m;
    double dsum = 0.0;
    double dweight = 0.0;
};

class SessionTable {
public:
    struct DirtyRow {
        std::string key;
        SessionState state;
    };

    SessionTable(std::int64_t gap_ms, std::int64_t half_life_ms)
        : gap_ms_(gap_ms), half_life_ms_(half_life_ms) {
        check_param(gap_ms, 1, "gap_ms");
        check_param(half_life_ms, 0, "half_life_ms");
    }

    std::int64_t gap_ms() const noexcept { return gap_ms_; }
    std::int64_t half_life_ms() const noexcept { return half_life_ms_; }
    std::int64_t late() const noexcept { return late_; }
    std::size_t size() const noexcept { return states_.size(); }
    std::size_t dirty_count() const noexcept { return states_.dirty_count(); }

    double decay(std::int64_t dt) const noexcept {
        return std::exp2(-(static_cast<double>(dt) / static_cast<double>(half_life_ms_)));
    }

    void update_many(const std::string_view *keys, const std::int64_t *ts,
                     const double *values, const bool *has_value, std::size_t n,
                     double *out) {
        constexpr double nan = std::numeric_limits<double>::quiet_NaN();
        check_ts_range(ts, n);
        const bool decays = half_life_ms_ > 0;
        for (std::size_t i = 0; i < n; ++i) {
            const std::int64_t t = ts[i];
            const double v = values[i];
            const bool has = has_value[i];
            double *row = out + i * kSessionWidth;
            const std::uint64_t h = key_hash(keys[i]);
            std::uint32_t e = states_.find(keys[i], h);
            if (e == States::kNone) {
                if (has) {
                    e = states_.insert(keys[i], h);
                    fresh(states_.entry(e).state, t, v);
                    states_.mark_dirty(e);
                    report(states_.entry(e).state, t, nan, row);
                } else {
                    empty(nan, row);
                }
                continue;
            }
            SessionState &st = states_.entry(e).state;
            if (t < st.start) {
                ++late_;
                report(st, st.newest, nan, row);
            } else if (t >= st.newest) {
                const double since = static_cast<double>(t - st.newest);
                if (t - st.newest >= gap_ms_) {
                    if (has) {
                        fresh(st, t, v);
                        states_.mark_dirty(e);
                        report(st, t, since, row);
                    } else {
                        empty(since, row);
                    }
                } else if (has) {
                    if (decays) {
                        const double f = decay(t - st.newest);
                        st.dsum = st.dsum * f + v;
                        st.dweight = st.dweight * f + 1.0;
                    }
                    st.m = merge(st.m, single(v));
                    st.newest = t;
                    states_.mark_dirty(e);
                    report(st, t, since, row);
                } else {
                    report(st, t, since, row);
                    if (decays) row[8] = st.dsum * decay(t - st.newest);
                }
            } else {
                if (has) {
                    if (decays) {
                        const double f = decay(st.newest - t);
                        st.dsum = st.dsum + v * f;
                        st.dweight = st.dweight + f;
                    }
                    st.m = merge(st.m, single(v));
                    states_.mark_dirty(e);
                }
                report(st, st.newest, nan, row);
            }
        }
    }

    std::vector<std::size_t> missing(const std::string_view *keys, std::size_t n) const {
        return states_.missing(keys, n);
    }

    bool load(std::string_view key, const SessionState &state) {
        check_loaded_count(state.m.n);
        const std::uint64_t h = key_hash(key);
        if (states_.find(key, h) != States::kNone) return false;
        states_.entry(states_.insert(key, h)).state = state;
        return true;
    }

    std::vector<DirtyRow> take_dirty() {
        std::vector<DirtyRow> rows;
        rows.reserve(states_.dirty_count());
        for (const std::uint32_t e : states_.dirty()) {
            rows.push_back(DirtyRow{states_.entry(e).key, states_.entry(e).state});
        }
        states_.clear_dirty();
        return rows;
    }

    void clear() { states_.clear(); }

private:
    using States = KeyedStates<SessionState>;

    void fresh(SessionState &st, std::int64_t t, double v) const noexcept {
        st.start = t;
        st.newest = t;
        st.m = single(v);
        st.dsum = half_life_ms_ > 0 ? v : 0.0;
        st.dweight = half_life_ms_ > 0 ? 1.0 : 0.0;
    }

    void report(const SessionState &st, std::int64_t at, double since, double *row) const noexcept {
        write_stats(st.m, row);
        row[6] = since;
        row[7] = static_cast<double>(at - st.start);
        if (half_life_ms_ > 0) {
            row[8] = st.dsum;
            row[9] = st.dsum / st.dweight;
        } else {
            row[8] = 0.0;
            row[9] = 0.0;
        }
    }

    static void empty(double since, double *row) noexcept {
        for (std::size_t j = 0; j < kSessionWidth; ++j) row[j] = 0.0;
        row[6] = since;
    }

    std::int64_t gap_ms_;
    std::int64_t half_life_ms_;
    std::int64_t late_ = 0;
    States states_;
};

}  // namespace kernels
}  // namespace streamscore
