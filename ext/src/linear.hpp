// Online standardised logistic regression, bit-identical to River's
//   preprocessing.StandardScaler() | linear_model.LogisticRegression(optim.SGD(lr), l2, intercept_lr)
// with models.registry._ExactDot (math.fsum dot product).  ext/_reference.py's
// ScaledLogistic is the pure-Python twin; tests/unit/test_linear.py checks
// both against River itself on random streams.
//
// Every floating-point operation follows River's order (see the comments), and
// libm's exp/pow are the ones Python's math.exp and ** call, so the answers
// are the same bits.  Compiled with -ffp-contract=off (no FMA).

#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace streamscore::kernels {

// CPython 3.11's math.fsum (Shewchuk's msum with the half-even fix-up):
// the correctly rounded sum, the same errors for overflow and inf - inf.
inline double fsum(const std::vector<double>& values, std::vector<double>& partials) {
    partials.clear();
    double special_sum = 0.0, inf_sum = 0.0;
    for (double x : values) {
        const double xsave = x;
        std::size_t i = 0;
        for (std::size_t j = 0; j < partials.size(); ++j) {
            double y = partials[j];
            if (std::fabs(x) < std::fabs(y)) {
                const double t = x;
                x = y;
                y = t;
            }
            const double hi = x + y;
            const double yr = hi - x;
            const double lo = y - yr;
            if (lo != 0.0) partials[i++] = lo;
            x = hi;
        }
        partials.resize(i);
        if (x != 0.0) {
            if (!std::isfinite(x)) {
                if (std::isfinite(xsave)) throw std::overflow_error("intermediate overflow in fsum");
                if (std::isinf(xsave)) inf_sum += xsave;
                special_sum += xsave;
                partials.clear();
            } else {
                partials.push_back(x);
            }
        }
    }
    if (special_sum != 0.0) {
        if (std::isnan(inf_sum)) throw std::domain_error("-inf + inf in fsum");
        return special_sum;
    }
    double hi = 0.0;
    std::size_t n = partials.size();
    if (n > 0) {
        hi = partials[--n];
        double lo = 0.0;
        while (n > 0) {
            const double x = hi;
            const double y = partials[--n];
            hi = x + y;
            const double yr = hi - x;
            lo = y - yr;
            if (lo != 0.0) break;
        }
        if (n > 0 && ((lo < 0.0 && partials[n - 1] < 0.0) || (lo > 0.0 && partials[n - 1] > 0.0))) {
            const double y = lo * 2.0;
            const double x = hi + y;
            const double yr = x - hi;
            if (y == yr) hi = x;
        }
    }
    return hi;
}

class ScaledLogistic {
public:
    ScaledLogistic(double lr, double l2, double intercept_lr, double clip_gradient)
        : lr_(lr), l2_(l2), intercept_lr_(intercept_lr), clip_(clip_gradient) {}

    // The slot of feature `name` (created on first sight, like River's defaultdicts).
    std::size_t slot(const std::string& name) {
        auto it = index_.find(name);
        if (it != index_.end()) return it->second;
        const std::size_t s = names_.size();
        index_.emplace(name, s);
        names_.push_back(name);
        counts_.push_back(0);
        means_.push_back(0.0);
        vars_.push_back(0.0);
        weights_.push_back(0.0);
        return s;
    }

    // P(y = 1 | x) with the current statistics; x as (slot, value) pairs.
    double predict_proba(const std::vector<std::size_t>& slots, const std::vector<double>& xs) {
        transform(slots, xs);
        const double raw = raw_dot(slots);
        // river.utils.math.sigmoid
        if (raw < -30) return 0.0;
        if (raw > 30) return 1.0;
        return 1 / (1 + std::exp(-raw));
    }

    // Pipeline.learn_one: the scaler learns x, then the model learns from x scaled by the new statistics.
    void learn(const std::vector<std::size_t>& slots, const std::vector<double>& xs, bool y) {
        const std::size_t n = slots.size();
        for (std::size_t k = 0; k < n; ++k) {          // StandardScaler.learn_one
            const std::size_t i = slots[k];
            const double xi = xs[k];
            counts_[i] += 1;
            const double c = static_cast<double>(counts_[i]);
            const double old_mean = means_[i];
            means_[i] += (xi - old_mean) / c;
            vars_[i] += ((xi - old_mean) * (xi - means_[i]) - vars_[i]) / c;
        }
        transform(slots, xs);
        const double raw = raw_dot(slots);
        // optim.losses.Log.gradient (weights 1.0), then * sample weight 1.0, then clamp
        const double yt = y ? 1.0 : -1.0;
        const double z = raw * yt;
        double g;
        if (z > 18.0) {
            g = 1.0 * std::exp(-z) * -yt;
        } else if (z < -18.0) {
            g = 1.0 * -yt;
        } else {
            g = 1.0 * -yt / (std::exp(z) + 1.0);
        }
        g *= 1.0;
        // utils.math.clamp: max(min(g, clip), -clip) with Python's min/max on NaN
        if (clip_ < g) g = clip_;
        if (-clip_ > g) g = -clip_;
        intercept_ -= intercept_lr_ * g;
        // gradient = x * g (+ l2 * w), then SGD: w -= lr * gradient
        for (std::size_t k = 0; k < n; ++k) {
            const std::size_t i = slots[k];
            double gi = z_[k] * g;
            if (l2_ != 0.0) gi += weights_[i] * l2_;
            weights_[i] -= gi * lr_;
        }
        ++n_iterations_;
    }

    // state, in slot order
    const std::vector<std::string>& names() const { return names_; }
    const std::vector<std::int64_t>& counts() const { return counts_; }
    const std::vector<double>& means() const { return means_; }
    const std::vector<double>& vars() const { return vars_; }
    const std::vector<double>& weights() const { return weights_; }
    double intercept() const { return intercept_; }
    std::int64_t n_iterations() const { return n_iterations_; }
    double lr() const { return lr_; }
    double l2() const { return l2_; }
    double intercept_lr() const { return intercept_lr_; }
    double clip_gradient() const { return clip_; }

    void restore(std::size_t s, std::int64_t count, double mean, double var, double weight) {
        counts_.at(s) = count;
        means_.at(s) = mean;
        vars_.at(s) = var;
        weights_.at(s) = weight;
    }
    void set_intercept(double v, std::int64_t n_iterations) {
        intercept_ = v;
        n_iterations_ = n_iterations;
    }

private:
    // StandardScaler.transform_one: (x - mean) / var ** 0.5 if var else 0.0
    void transform(const std::vector<std::size_t>& slots, const std::vector<double>& xs) {
        const std::size_t n = slots.size();
        z_.resize(n);
        for (std::size_t k = 0; k < n; ++k) {
            const std::size_t i = slots[k];
            const double v = vars_[i];
            if (v != 0.0) {   // NaN is truthy in Python too
                if (v < 0.0) throw std::domain_error("negative number cannot be raised to a fractional power");
                z_[k] = (xs[k] - means_[i]) / std::pow(v, 0.5);
            } else {
                z_[k] = 0.0;
            }
        }
    }

    // _ExactDot._raw_dot_one: fsum(w_i * z_i) + intercept
    double raw_dot(const std::vector<std::size_t>& slots) {
        const std::size_t n = slots.size();
        prod_.resize(n);
        for (std::size_t k = 0; k < n; ++k) prod_[k] = weights_[slots[k]] * z_[k];
        return fsum(prod_, partials_) + intercept_;
    }

    double lr_, l2_, intercept_lr_, clip_;
    std::unordered_map<std::string, std::size_t> index_;
    std::vector<std::string> names_;
    std::vector<std::int64_t> counts_;
    std::vector<double> means_, vars_, weights_;
    double intercept_ = 0.0;
    std::int64_t n_iterations_ = 0;
    std::vector<double> z_, prod_, partials_;
};

}  // namespace streamscore::kernels
