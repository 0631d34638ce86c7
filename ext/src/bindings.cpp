// Thin nanobind binding of ext/src/kernels.hpp as the module `ext._native`.
//
// Only argument conversion, validation and GIL handling live here; every
// computation is in kernels.hpp.  Keep ext/_native.pyi and ext/_reference.py
// in sync with what is defined below (tests/unit/test_ext_parity.py checks).

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels.hpp"
#include "linear.hpp"

namespace nb = nanobind;
namespace k = streamscore::kernels;

namespace {

// Below this many items the GIL is kept: releasing and re-acquiring it costs
// more than the loop and, under contention, can stall the caller for a whole
// switch interval.
constexpr std::size_t kReleaseGilMinItems = 1024;

using I64Array = nb::ndarray<nb::numpy, std::int64_t, nb::ndim<1>>;
using F64Matrix = nb::ndarray<nb::numpy, double, nb::ndim<2>>;
using I64In = nb::ndarray<const std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using F64In = nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using BoolIn = nb::ndarray<const bool, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// UTF-8 view of a str; raises UnicodeEncodeError (e.g. lone surrogates) like
// str.encode("utf-8") does.  The view lives as long as the str object.
std::pair<const char *, std::size_t> utf8_of(nb::handle s) {
    Py_ssize_t len = 0;
    const char *data = PyUnicode_AsUTF8AndSize(s.ptr(), &len);
    if (data == nullptr) throw nb::python_error();
    return {data, static_cast<std::size_t>(len)};
}

std::int64_t hash_string(const nb::str &value, std::int64_t n_buckets,
                         std::uint64_t seed) {
    k::check_n_buckets(n_buckets);
    const auto [data, len] = utf8_of(value);
    return k::hash_bucket(data, len, n_buckets, seed);
}

I64Array hash_strings(const nb::typed<nb::iterable, nb::str> &values,
                      std::int64_t n_buckets, std::uint64_t seed) {
    k::check_n_buckets(n_buckets);
    if (PyUnicode_Check(values.ptr())) {
        throw nb::type_error("hash_strings() expects an iterable of str, not a str");
    }
    // A private list keeps every item alive while the GIL is released, even
    // if the caller's container is mutated concurrently.
    nb::list items = nb::steal<nb::list>(PySequence_List(values.ptr()));
    if (!items.is_valid()) throw nb::python_error();
    const std::size_t n = items.size();

    std::vector<std::pair<const char *, std::size_t>> views(n);
    for (std::size_t i = 0; i < n; ++i) {
        nb::handle item = items[i];
        if (!PyUnicode_Check(item.ptr())) {
            throw nb::type_error(("hash_strings(): values[" + std::to_string(i) +
                                  "] is not a str (got " +
                                  std::string(Py_TYPE(item.ptr())->tp_name) + ")")
                                     .c_str());
        }
        views[i] = utf8_of(item);
    }

    std::unique_ptr<std::int64_t[]> out(new std::int64_t[n == 0 ? 1 : n]);
    {
        std::optional<nb::gil_scoped_release> nogil;
        if (n >= kReleaseGilMinItems) nogil.emplace();
        std::int64_t *dst = out.get();
        for (std::size_t i = 0; i < n; ++i) {
            dst[i] = k::hash_bucket(views[i].first, views[i].second, n_buckets, seed);
        }
    }
    std::int64_t *data = out.get();
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<std::int64_t *>(p); });
    out.release();
    return I64Array(data, {n}, owner);
}

F64Matrix update_many(k::SlidingWindow &w, const I64In &ts, const F64In &values) {
    const std::size_t n = ts.shape(0);
    if (values.shape(0) != n) {
        throw nb::value_error(("update_many(): ts and values must have the same length, got " +
                               std::to_string(n) + " and " +
                               std::to_string(values.shape(0)))
                                  .c_str());
    }
    std::unique_ptr<double[]> out(new double[n == 0 ? 1 : n * k::kStatsWidth]);
    {
        std::optional<nb::gil_scoped_release> nogil;
        if (n >= kReleaseGilMinItems) nogil.emplace();
        w.update_many(ts.data(), values.data(), n, out.get());
    }
    double *data = out.get();
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<double *>(p); });
    out.release();
    return F64Matrix(data, {n, k::kStatsWidth}, owner);
}

k::SlidingWindow from_state(std::int64_t size_ms, const std::vector<std::int64_t> &ts,
                            const std::vector<double> &values) {
    if (ts.size() != values.size()) {
        throw nb::value_error(("from_state(): ts and values must have the same length, got " +
                               std::to_string(ts.size()) + " and " +
                               std::to_string(values.size()))
                                  .c_str());
    }
    return k::SlidingWindow::from_state(size_ms, ts.data(), values.data(), ts.size());
}

std::pair<std::vector<std::int64_t>, std::vector<double>> state(const k::SlidingWindow &w) {
    std::pair<std::vector<std::int64_t>, std::vector<double>> st;
    w.state(st.first, st.second);
    return st;
}

// Pickle support (also makes copy.copy / copy.deepcopy work).
using PickleState = std::tuple<std::int64_t, std::vector<std::int64_t>, std::vector<double>>;

PickleState pickle_getstate(const k::SlidingWindow &w) {
    PickleState st;
    std::get<0>(st) = w.size_ms();
    w.state(std::get<1>(st), std::get<2>(st));
    return st;
}

void pickle_setstate(k::SlidingWindow &w, const PickleState &st) {
    new (&w) k::SlidingWindow(from_state(std::get<0>(st), std::get<1>(st), std::get<2>(st)));
}

// -- TumblingTable -------------------------------------------------------------

// The table plus a flag set while a call is using it.  update_many and
// missing release the GIL, so another Python thread could otherwise mutate the
// table underneath them; with the flag that thread gets a RuntimeError instead
// of undefined behaviour.  (The flag is only read and written with the GIL held.)
struct TumblingTableObj {
    k::TumblingTable table;
    bool busy = false;
    explicit TumblingTableObj(std::int64_t size_ms) : table(size_ms) {}
};

void check_idle(const TumblingTableObj &self) {
    if (self.busy) {
        throw std::runtime_error(
            "TumblingTable is in use by another thread (tables are not thread-safe)");
    }
}

class BusyGuard {
public:
    explicit BusyGuard(TumblingTableObj &self) : self_(self) {
        check_idle(self);
        self_.busy = true;
    }
    ~BusyGuard() { self_.busy = false; }
    BusyGuard(const BusyGuard &) = delete;
    BusyGuard &operator=(const BusyGuard &) = delete;

private:
    TumblingTableObj &self_;
};

// UTF-8 views of a sequence of str.  `items` is a private list that keeps
// every str (and so every view) alive while the GIL is released.
struct KeyViews {
    nb::list items;
    std::vector<std::string_view> views;
};

KeyViews key_views(nb::handle keys, const char *fn) {
    if (PyUnicode_Check(keys.ptr())) {
        throw nb::type_error((std::string(fn) + "(): keys must be a sequence of str, not a str").c_str());
    }
    KeyViews kv;
    kv.items = nb::steal<nb::list>(PySequence_List(keys.ptr()));
    if (!kv.items.is_valid()) throw nb::python_error();
    const std::size_t n = kv.items.size();
    kv.views.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
        nb::handle item = kv.items[i];
        if (!PyUnicode_Check(item.ptr())) {
            throw nb::type_error((std::string(fn) + "(): keys[" + std::to_string(i) +
                                  "] is not a str (got " +
                                  std::string(Py_TYPE(item.ptr())->tp_name) + ")")
                                     .c_str());
        }
        const auto [data, len] = utf8_of(item);
        kv.views[i] = std::string_view(data, len);
    }
    return kv;
}

F64Matrix tumbling_update_many(TumblingTableObj &self,
                               const nb::typed<nb::sequence, nb::str> &keys,
                               const I64In &ts, const F64In &values,
                               const BoolIn &has_value) {
    BusyGuard guard(self);
    const KeyViews kv = key_views(keys, "update_many");
    const std::size_t n = kv.views.size();
    if (ts.shape(0) != n || values.shape(0) != n || has_value.shape(0) != n) {
        throw nb::value_error(
            ("update_many(): keys, ts, values and has_value must have the same length, got " +
             std::to_string(n) + ", " + std::to_string(ts.shape(0)) + ", " +
             std::to_string(values.shape(0)) + " and " + std::to_string(has_value.shape(0)))
                .c_str());
    }
    std::unique_ptr<double[]> out(new double[n == 0 ? 1 : n * k::kTumblingWidth]);
    {
        std::optional<nb::gil_scoped_release> nogil;
        if (n >= kReleaseGilMinItems) nogil.emplace();
        self.table.update_many(kv.views.data(), ts.data(), values.data(), has_value.data(), n,
                               out.get());
    }
    double *data = out.get();
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<double *>(p); });
    out.release();
    return F64Matrix(data, {n, k::kTumblingWidth}, owner);
}

nb::typed<nb::list, nb::str> tumbling_missing(TumblingTableObj &self,
                                              const nb::typed<nb::sequence, nb::str> &keys) {
    BusyGuard guard(self);
    const KeyViews kv = key_views(keys, "missing");
    const std::size_t n = kv.views.size();
    std::vector<std::size_t> rows;
    {
        std::optional<nb::gil_scoped_release> nogil;
        if (n >= kReleaseGilMinItems) nogil.emplace();
        rows = self.table.missing(kv.views.data(), n);
    }
    nb::list result;
    for (const std::size_t i : rows) result.append(kv.items[i]);
    return nb::typed<nb::list, nb::str>(result);
}

void tumbling_load(TumblingTableObj &self, const nb::str &key, std::int64_t start,
                   std::int64_t count, double sum, double min, double max) {
    BusyGuard guard(self);
    const auto [data, len] = utf8_of(key);
    if (!self.table.load(std::string_view(data, len), start, count, sum, min, max)) {
        throw nb::value_error(("load(): key " + std::string(nb::repr(key).c_str()) +
                               " already has state; load only keys returned by missing()")
                                  .c_str());
    }
}

using DirtyTuple = std::tuple<nb::str, std::int64_t, std::int64_t, double, double, double>;

std::vector<DirtyTuple> tumbling_take_dirty(TumblingTableObj &self) {
    BusyGuard guard(self);
    std::vector<k::TumblingTable::DirtyRow> rows = self.table.take_dirty();
    std::vector<DirtyTuple> result;
    result.reserve(rows.size());
    for (const auto &r : rows) {
        result.emplace_back(nb::str(r.key.data(), r.key.size()), r.state.start, r.state.count,
                            r.state.sum, r.state.min, r.state.max);
    }
    return result;
}

// take_dirty() as store entries: (UTF-8 key, b"T" + little-endian int64 start, int64 count,
// double sum, min, max), the bytes ext/_reference.py's struct.pack("<cqqddd", ...) gives. Why:
// the state layer wrote each dirty key with a Python tuple, an orjson.dumps and a put call
// (~0.7 us a key, ~2 keys an event in the full pipeline); these go to the store in one update.
std::vector<std::pair<nb::bytes, nb::bytes>> tumbling_take_dirty_packed(TumblingTableObj &self,
                                                                        const nb::bytes &prefix) {
    static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the packed state is little-endian");
    BusyGuard guard(self);
    std::vector<k::TumblingTable::DirtyRow> rows = self.table.take_dirty();
    std::vector<std::pair<nb::bytes, nb::bytes>> result;
    result.reserve(rows.size());
    char buf[41];
    buf[0] = 'T';
    // the store key is prefix + key: the caller keeps entities by their bare key (no Python string
    // built per event and window definition) and names the definition's state here, once per flush
    std::string key(prefix.c_str(), prefix.size());
    const std::size_t plen = prefix.size();
    for (const auto &r : rows) {
        const std::int64_t start = r.state.start, count = r.state.count;
        std::memcpy(buf + 1, &start, 8);
        std::memcpy(buf + 9, &count, 8);
        std::memcpy(buf + 17, &r.state.sum, 8);
        std::memcpy(buf + 25, &r.state.min, 8);
        std::memcpy(buf + 33, &r.state.max, 8);
        key.resize(plen);
        key.append(r.key);
        result.emplace_back(nb::bytes(key.data(), key.size()), nb::bytes(buf, sizeof buf));
    }
    return result;
}

void tumbling_clear(TumblingTableObj &self) {
    BusyGuard guard(self);
    self.table.clear();
}

std::size_t tumbling_len(const TumblingTableObj &self) {
    check_idle(self);
    return self.table.size();
}

std::int64_t tumbling_late(const TumblingTableObj &self) {
    check_idle(self);
    return self.table.late();
}

std::string tumbling_repr(const TumblingTableObj &self) {
    check_idle(self);
    return "TumblingTable(size_ms=" + std::to_string(self.table.size_ms()) +
           ", keys=" + std::to_string(self.table.size()) +
           ", dirty=" + std::to_string(self.table.dirty_count()) +
           ", late=" + std::to_string(self.table.late()) + ")";
}

// -- HoppingTable / SessionTable ------------------------------------------------

// A table plus the same busy flag as TumblingTableObj (see there).
template <class Table>
struct Guarded {
    Table table;
    bool busy = false;
    template <class... Args>
    explicit Guarded(Args... args) : table(args...) {}
};

template <class Obj>
void check_idle_obj(const Obj &self, const char *name) {
    if (self.busy) {
        throw std::runtime_error(std::string(name) +
                                 " is in use by another thread (tables are not thread-safe)");
    }
}

template <class Obj>
class ObjGuard {
public:
    ObjGuard(Obj &self, const char *name) : self_(self) {
        check_idle_obj(self, name);
        self_.busy = true;
    }
    ~ObjGuard() { self_.busy = false; }
    ObjGuard(const ObjGuard &) = delete;
    ObjGuard &operator=(const ObjGuard &) = delete;

private:
    Obj &self_;
};

using HoppingObj = Guarded<k::HoppingTable>;
using SessionObj = Guarded<k::SessionTable>;
constexpr const char *kHopping = "HoppingTable";
constexpr const char *kSession = "SessionTable";

// update_many of a keyed table with `width` output columns.
template <class Obj>
F64Matrix keyed_update_many(Obj &self, const char *name, std::size_t width,
                            const nb::typed<nb::sequence, nb::str> &keys, const I64In &ts,
                            const F64In &values, const BoolIn &has_value) {
    ObjGuard<Obj> guard(self, name);
    const KeyViews kv = key_views(keys, "update_many");
    const std::size_t n = kv.views.size();
    if (ts.shape(0) != n || values.shape(0) != n || has_value.shape(0) != n) {
        throw nb::value_error(
            ("update_many(): keys, ts, values and has_value must have the same length, got " +
             std::to_string(n) + ", " + std::to_string(ts.shape(0)) + ", " +
             std::to_string(values.shape(0)) + " and " + std::to_string(has_value.shape(0)))
                .c_str());
    }
    std::unique_ptr<double[]> out(new double[n == 0 ? 1 : n * width]);
    {
        std::optional<nb::gil_scoped_release> nogil;
        if (n >= kReleaseGilMinItems) nogil.emplace();
        self.table.update_many(kv.views.data(), ts.data(), values.data(), has_value.data(), n,
                               out.get());
    }
    double *data = out.get();
    nb::capsule owner(data, [](void *p) noexcept { delete[] static_cast<double *>(p); });
    out.release();
    return F64Matrix(data, {n, width}, owner);
}

template <class Obj>
nb::typed<nb::list, nb::str> keyed_missing(Obj &self, const char *name,
                                           const nb::typed<nb::sequence, nb::str> &keys) {
    ObjGuard<Obj> guard(self, name);
    const KeyViews kv = key_views(keys, "missing");
    const std::size_t n = kv.views.size();
    std::vector<std::size_t> rows;
    {
        std::optional<nb::gil_scoped_release> nogil;
        if (n >= kReleaseGilMinItems) nogil.emplace();
        rows = self.table.missing(kv.views.data(), n);
    }
    nb::list result;
    for (const std::size_t i : rows) result.append(kv.items[i]);
    return nb::typed<nb::list, nb::str>(result);
}

[[noreturn]] void already_loaded(const nb::str &key) {
    throw nb::value_error(("load(): key " + std::string(nb::repr(key).c_str()) +
                           " already has state; load only keys returned by missing()")
                              .c_str());
}

void hopping_load(HoppingObj &self, const nb::str &key, std::int64_t newest,
                  const std::vector<std::int64_t> &buckets, const std::vector<std::int64_t> &counts,
                  const std::vector<double> &sums, const std::vector<double> &means,
                  const std::vector<double> &m2s, const std::vector<double> &mins,
                  const std::vector<double> &maxs) {
    ObjGuard<HoppingObj> guard(self, kHopping);
    const std::size_t nb_ = buckets.size();
    if (counts.size() != nb_ || sums.size() != nb_ || means.size() != nb_ ||
        m2s.size() != nb_ || mins.size() != nb_ || maxs.size() != nb_) {
        throw nb::value_error("load(): the bucket columns must have the same length");
    }
    const auto [data, len] = utf8_of(key);
    std::vector<k::HopBucket> bs(nb_);
    for (std::size_t j = 0; j < nb_; ++j) {
        bs[j].bucket = buckets[j];
        bs[j].m.n = counts[j];
        bs[j].m.sum = sums[j];
        bs[j].m.mean = means[j];
        bs[j].m.m2 = m2s[j];
        bs[j].m.min = mins[j];
        bs[j].m.max = maxs[j];
    }
    if (!self.table.load(std::string_view(data, len), newest, std::move(bs))) already_loaded(key);
}

using HopDirty = std::tuple<nb::str, std::int64_t, std::vector<std::int64_t>,
                            std::vector<std::int64_t>, std::vector<double>, std::vector<double>,
                            std::vector<double>, std::vector<double>, std::vector<double>>;

std::vector<HopDirty> hopping_take_dirty(HoppingObj &self) {
    ObjGuard<HoppingObj> guard(self, kHopping);
    std::vector<k::HoppingTable::DirtyRow> rows = self.table.take_dirty();
    std::vector<HopDirty> result;
    result.reserve(rows.size());
    for (const auto &r : rows) {
        HopDirty d;
        std::get<0>(d) = nb::str(r.key.data(), r.key.size());
        std::get<1>(d) = r.state.newest;
        for (const k::HopBucket &b : r.state.buckets) {
            std::get<2>(d).push_back(b.bucket);
            std::get<3>(d).push_back(b.m.n);
            std::get<4>(d).push_back(b.m.sum);
            std::get<5>(d).push_back(b.m.mean);
            std::get<6>(d).push_back(b.m.m2);
            std::get<7>(d).push_back(b.m.min);
            std::get<8>(d).push_back(b.m.max);
        }
        result.push_back(std::move(d));
    }
    return result;
}

void session_load(SessionObj &self, const nb::str &key, std::int64_t start, std::int64_t newest,
                  std::int64_t count, double sum, double mean, double m2, double min, double max,
                  double dsum, double dweight) {
    ObjGuard<SessionObj> guard(self, kSession);
    const auto [data, len] = utf8_of(key);
    k::SessionState st;
    st.start = start;
    st.newest = newest;
    st.m.n = count;
    st.m.sum = sum;
    st.m.mean = mean;
    st.m.m2 = m2;
    st.m.min = min;
    st.m.max = max;
    st.dsum = dsum;
    st.dweight = dweight;
    if (!self.table.load(std::string_view(data, len), st)) already_loaded(key);
}

using SessionDirty = std::tuple<nb::str, std::int64_t, std::int64_t, std::int64_t, double, double,
                                double, double, double, double, double>;

std::vector<SessionDirty> session_take_dirty(SessionObj &self) {
    ObjGuard<SessionObj> guard(self, kSession);
    std::vector<k::SessionTable::DirtyRow> rows = self.table.take_dirty();
    std::vector<SessionDirty> result;
    result.reserve(rows.size());
    for (const auto &r : rows) {
        const k::SessionState &s = r.state;
        result.emplace_back(nb::str(r.key.data(), r.key.size()), s.start, s.newest, s.m.n,
                            s.m.sum, s.m.mean, s.m.m2, s.m.min, s.m.max, s.dsum, s.dweight);
    }
    return result;
}

// ext.ScaledLogistic: River's StandardScaler | LogisticRegression (linear.hpp).
class ScaledLogisticObj {
public:
    ScaledLogisticObj(double lr, double l2, double intercept_lr, double clip_gradient)
        : m_(lr, l2, intercept_lr, clip_gradient) {}

    double predict_proba_one(nb::dict x) {
        read(x);
        return m_.predict_proba(slots_, xs_);
    }

    void learn_one(nb::dict x, bool y) {
        read(x);
        m_.learn(slots_, xs_, y);
    }

    nb::dict state() const {
        nb::dict d;
        d["lr"] = m_.lr();
        d["l2"] = m_.l2();
        d["intercept_lr"] = m_.intercept_lr();
        d["clip_gradient"] = m_.clip_gradient();
        d["names"] = nb::cast(m_.names());
        d["counts"] = nb::cast(m_.counts());
        d["means"] = nb::cast(m_.means());
        d["vars"] = nb::cast(m_.vars());
        d["weights"] = nb::cast(m_.weights());
        d["intercept"] = m_.intercept();
        d["n_iterations"] = m_.n_iterations();
        return d;
    }

    static ScaledLogisticObj from_state(nb::dict st) {
        ScaledLogisticObj o(nb::cast<double>(st["lr"]), nb::cast<double>(st["l2"]),
                            nb::cast<double>(st["intercept_lr"]), nb::cast<double>(st["clip_gradient"]));
        auto names = nb::cast<std::vector<std::string>>(st["names"]);
        auto counts = nb::cast<std::vector<std::int64_t>>(st["counts"]);
        auto means = nb::cast<std::vector<double>>(st["means"]);
        auto vars = nb::cast<std::vector<double>>(st["vars"]);
        auto weights = nb::cast<std::vector<double>>(st["weights"]);
        if (counts.size() != names.size() || means.size() != names.size() || vars.size() != names.size() ||
            weights.size() != names.size())
            throw nb::value_error("ScaledLogistic state: names, counts, means, vars and weights differ in length");
        for (std::size_t i = 0; i < names.size(); ++i)
            o.m_.restore(o.m_.slot(names[i]), counts[i], means[i], vars[i], weights[i]);
        o.m_.set_intercept(nb::cast<double>(st["intercept"]), nb::cast<std::int64_t>(st["n_iterations"]));
        return o;
    }

private:
    void read(nb::dict x) {
        slots_.clear();
        xs_.clear();
        for (auto item : x) {
            if (!nb::isinstance<nb::str>(item.first))
                throw nb::type_error("feature names must be str");
            slots_.push_back(slot_of(item.first.ptr()));
            PyObject* o = item.second.ptr();
            double v;
            if (PyFloat_Check(o)) {
                v = PyFloat_AS_DOUBLE(o);
            } else if (PyLong_Check(o)) {
                v = PyLong_AsDouble(o);
                if (v == -1.0 && PyErr_Occurred()) throw nb::python_error();
            } else {
                throw nb::type_error((std::string("feature '") + nb::borrow<nb::str>(item.first).c_str() +
                                      "': a number is needed").c_str());
            }
            xs_.push_back(v);
        }
    }

    // The slot of a feature name, by the name object's address first: a pipeline passes the
    // same str objects (its spec's field and feature names) with every event, and a lookup by
    // address skips building a std::string of each name (a heap allocation past 15 bytes) and
    // hashing it: ~0.9 -> ~0.5 us a call with 20 features. The cache holds a reference to each
    // name it keeps, so an address can never be reused by another string while it is cached;
    // it keeps at most kMaxCachedNames, and looks other names up by value.
    std::size_t slot_of(PyObject* name) {
        auto it = by_address_.find(name);
        if (it != by_address_.end()) return it->second;
        const std::size_t s = m_.slot(nb::borrow<nb::str>(name).c_str());
        if (by_address_.size() < kMaxCachedNames) {
            held_.push_back(nb::borrow<nb::object>(name));
            by_address_.emplace(name, s);
        }
        return s;
    }

    static constexpr std::size_t kMaxCachedNames = 4096;
    k::ScaledLogistic m_;
    std::vector<std::size_t> slots_;
    std::vector<double> xs_;
    std::unordered_map<PyObject*, std::size_t> by_address_;
    std::vector<nb::object> held_;
};

}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "Native (C++/nanobind) streamscore kernels; see ext/__init__.py for the spec.";

    m.def("hash_string", &hash_string, nb::arg("value"), nb::arg("n_buckets"),
          nb::arg("seed") = 0,
          "Bucket of one string: 64-bit FNV-1a (basis XOR seed) of its UTF-8 bytes, "
          "modulo n_buckets.");
    m.def("hash_strings", &hash_strings,
          nb::arg("values"), nb::arg("n_buckets"),
          nb::arg("seed") = 0,
          "Buckets of many strings as a 1-D int64 array; same hash as hash_string().");

    nb::class_<k::SlidingWindow>(m, "SlidingWindow",
                                 "Time window (ts - size_ms, ts] over one entity's values.")
        .def(nb::init<std::int64_t>(), nb::arg("size_ms"))
        .def_static("from_state", &from_state, nb::arg("size_ms"), nb::arg("ts"),
                    nb::arg("values"),
                    "Window equal to SlidingWindow(size_ms) fed every (ts, value) pair "
                    "in order; inverse of state().")
        .def("update", &k::SlidingWindow::update, nb::arg("ts"), nb::arg("value"),
             "Append (ts, value), then evict items with item_ts <= ts - size_ms.")
        .def("update_many", &update_many, nb::arg("ts"), nb::arg("values"),
             "Apply every row; returns an (n, 6) float64 array of "
             "[count, sum, mean, min, max, var] after each row.")
        .def("state", &state, "Live items, oldest first, as (ts list, values list).")
        .def_prop_ro("size_ms", &k::SlidingWindow::size_ms)
        .def_prop_ro("count", &k::SlidingWindow::count)
        .def_prop_ro("sum", [](const k::SlidingWindow &w) { return w.stats().sum; })
        .def_prop_ro("mean", [](const k::SlidingWindow &w) { return w.stats().mean; })
        .def_prop_ro("min", [](const k::SlidingWindow &w) { return w.stats().min; })
        .def_prop_ro("max", [](const k::SlidingWindow &w) { return w.stats().max; })
        .def_prop_ro("var", [](const k::SlidingWindow &w) { return w.stats().var; })
        .def_prop_ro("last", &k::SlidingWindow::last)
        .def("__getstate__", &pickle_getstate)
        .def("__setstate__", &pickle_setstate)
        .def("__repr__", [](const k::SlidingWindow &w) {
            return "SlidingWindow(size_ms=" + std::to_string(w.size_ms()) +
                   ", count=" + std::to_string(w.count()) + ")";
        });

    nb::class_<TumblingTableObj>(m, "TumblingTable",
                                 "Tumbling-window [count, sum, min, max] per key; see ext/__init__.py.")
        .def(nb::init<std::int64_t>(), nb::arg("size_ms"))
        .def("update_many", &tumbling_update_many, nb::arg("keys"), nb::arg("ts"),
             nb::arg("values"), nb::arg("has_value"),
             "Apply every row in order; returns an (n, 5) float64 array of "
             "[count, sum, mean, min, max] of the row's key after each row.")
        .def("missing", &tumbling_missing, nb::arg("keys"),
             "Distinct keys (first-seen order) that have no state in the table.")
        .def("load", &tumbling_load, nb::arg("key"), nb::arg("start"), nb::arg("count"),
             nb::arg("sum"), nb::arg("min"), nb::arg("max"),
             "Install a key's state read from the store (not marked dirty).")
        .def("take_dirty", &tumbling_take_dirty,
             "(key, start, count, sum, min, max) of every dirty key, in first-dirtied "
             "order; clears the dirty set.")
        .def("take_dirty_packed", &tumbling_take_dirty_packed, nb::arg("prefix") = nb::bytes("", 0),
             "take_dirty() as (prefix + UTF-8 key, b'T' + struct.pack('<qqddd', start, count, sum, min, "
             "max)) pairs: store entries.")
        .def("clear", &tumbling_clear,
             "Drop all held state; raises RuntimeError if dirty keys were not taken.")
        .def_prop_ro("size_ms", [](const TumblingTableObj &self) { return self.table.size_ms(); })
        .def_prop_ro("late", &tumbling_late)
        .def("__len__", &tumbling_len)
        .def("__repr__", &tumbling_repr);

    nb::class_<HoppingObj>(m, "HoppingTable",
                           "Hopping-window [count, sum, mean, min, max, var] per key; see ext/__init__.py.")
        .def(nb::init<std::int64_t, std::int64_t, std::int64_t>(), nb::arg("size_ms"),
             nb::arg("hop_ms"), nb::arg("grace_ms") = 0)
        .def("update_many",
             [](HoppingObj &self, const nb::typed<nb::sequence, nb::str> &keys, const I64In &ts,
                const F64In &values, const BoolIn &has_value) {
                 return keyed_update_many(self, kHopping, k::kStatsWidth, keys, ts, values,
                                          has_value);
             },
             nb::arg("keys"), nb::arg("ts"), nb::arg("values"), nb::arg("has_value"),
             "Apply every row in order; returns an (n, 6) float64 array of "
             "[count, sum, mean, min, max, var] of each row's window.")
        .def("missing",
             [](HoppingObj &self, const nb::typed<nb::sequence, nb::str> &keys) {
                 return keyed_missing(self, kHopping, keys);
             },
             nb::arg("keys"), "Distinct keys (first-seen order) that have no state in the table.")
        .def("load", &hopping_load, nb::arg("key"), nb::arg("newest"), nb::arg("buckets"),
             nb::arg("counts"), nb::arg("sums"), nb::arg("means"), nb::arg("m2s"),
             nb::arg("mins"), nb::arg("maxs"),
             "Install a key's state read from the store (not marked dirty).")
        .def("take_dirty", &hopping_take_dirty,
             "(key, newest, buckets, counts, sums, means, m2s, mins, maxs) of every dirty key, "
             "in first-dirtied order; clears the dirty set.")
        .def("clear",
             [](HoppingObj &self) {
                 ObjGuard<HoppingObj> guard(self, kHopping);
                 self.table.clear();
             },
             "Drop all held state; raises RuntimeError if dirty keys were not taken.")
        .def_prop_ro("size_ms", [](const HoppingObj &self) { return self.table.size_ms(); })
        .def_prop_ro("hop_ms", [](const HoppingObj &self) { return self.table.hop_ms(); })
        .def_prop_ro("grace_ms", [](const HoppingObj &self) { return self.table.grace_ms(); })
        .def_prop_ro("late",
                     [](const HoppingObj &self) {
                         check_idle_obj(self, kHopping);
                         return self.table.late();
                     })
        .def("__len__",
             [](const HoppingObj &self) {
                 check_idle_obj(self, kHopping);
                 return self.table.size();
             })
        .def("__repr__", [](const HoppingObj &self) {
            check_idle_obj(self, kHopping);
            return "HoppingTable(size_ms=" + std::to_string(self.table.size_ms()) +
                   ", hop_ms=" + std::to_string(self.table.hop_ms()) +
                   ", grace_ms=" + std::to_string(self.table.grace_ms()) +
                   ", keys=" + std::to_string(self.table.size()) +
                   ", dirty=" + std::to_string(self.table.dirty_count()) +
                   ", late=" + std::to_string(self.table.late()) + ")";
        });

    nb::class_<SessionObj>(m, "SessionTable",
                           "Gap-based session aggregates per key; see ext/__init__.py.")
        .def(nb::init<std::int64_t, std::int64_t>(), nb::arg("gap_ms"),
             nb::arg("half_life_ms") = 0)
        .def("update_many",
             [](SessionObj &self, const nb::typed<nb::sequence, nb::str> &keys, const I64In &ts,
                const F64In &values, const BoolIn &has_value) {
                 return keyed_update_many(self, kSession, k::kSessionWidth, keys, ts, values,
                                          has_value);
             },
             nb::arg("keys"), nb::arg("ts"), nb::arg("values"), nb::arg("has_value"),
             "Apply every row in order; returns an (n, 10) float64 array of [count, sum, mean, "
             "min, max, var, since, duration, decay_sum, decay_mean] of each row's session.")
        .def("missing",
             [](SessionObj &self, const nb::typed<nb::sequence, nb::str> &keys) {
                 return keyed_missing(self, kSession, keys);
             },
             nb::arg("keys"), "Distinct keys (first-seen order) that have no state in the table.")
        .def("load", &session_load, nb::arg("key"), nb::arg("start"), nb::arg("newest"),
             nb::arg("count"), nb::arg("sum"), nb::arg("mean"), nb::arg("m2"), nb::arg("min"),
             nb::arg("max"), nb::arg("dsum"), nb::arg("dweight"),
             "Install a key's state read from the store (not marked dirty).")
        .def("take_dirty", &session_take_dirty,
             "(key, start, newest, count, sum, mean, m2, min, max, dsum, dweight) of every dirty "
             "key, in first-dirtied order; clears the dirty set.")
        .def("clear",
             [](SessionObj &self) {
                 ObjGuard<SessionObj> guard(self, kSession);
                 self.table.clear();
             },
             "Drop all held state; raises RuntimeError if dirty keys were not taken.")
        .def_prop_ro("gap_ms", [](const SessionObj &self) { return self.table.gap_ms(); })
        .def_prop_ro("half_life_ms",
                     [](const SessionObj &self) { return self.table.half_life_ms(); })
        .def_prop_ro("late",
                     [](const SessionObj &self) {
                         check_idle_obj(self, kSession);
                         return self.table.late();
                     })
        .def("__len__",
             [](const SessionObj &self) {
                 check_idle_obj(self, kSession);
                 return self.table.size();
             })
        .def("__repr__", [](const SessionObj &self) {
            check_idle_obj(self, kSession);
            return "SessionTable(gap_ms=" + std::to_string(self.table.gap_ms()) +
                   ", half_life_ms=" + std::to_string(self.table.half_life_ms()) +
                   ", keys=" + std::to_string(self.table.size()) +
                   ", dirty=" + std::to_string(self.table.dirty_count()) +
                   ", late=" + std::to_string(self.table.late()) + ")";
        });

    nb::class_<ScaledLogisticObj>(m, "ScaledLogistic",
        "River's StandardScaler() | LogisticRegression(optim.SGD(lr), l2, intercept_lr) with an fsum dot: "
        "the same bits (see ext/src/linear.hpp).")
        .def(nb::init<double, double, double, double>(), nb::arg("lr"), nb::arg("l2"), nb::arg("intercept_lr"),
             nb::arg("clip_gradient") = 1e12)
        .def("predict_proba_one", &ScaledLogisticObj::predict_proba_one, nb::arg("x"))
        .def("learn_one", &ScaledLogisticObj::learn_one, nb::arg("x"), nb::arg("y"))
        .def("state", &ScaledLogisticObj::state)
        .def_static("from_state", &ScaledLogisticObj::from_state, nb::arg("state"));
}
