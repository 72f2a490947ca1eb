// Shared by every cuda/emu/check*.cpp: the random input stream, one result line per check, the
// failure count and the exit status. Each check seeds `rng` first thing in main.
#pragma once
#include <cstdio>
#include <random>
#include <vector>

inline std::mt19937 rng;
inline int fails = 0;

// Prints one result line; `e` must be below `tol` (above it when `above`, for checks that a
// difference is really there).
inline void report(const char* what, double e, double tol, bool above = false) {
    const bool ok = above ? e > tol : e < tol;
    printf("%-62s %.3e %s\n", what, e, ok ? "ok" : "FAIL");
    if (!ok) fails++;
}

// `n + extra` uniform values in [lo, hi) (the extra ones let a view start one element in).
inline std::vector<float> uni(size_t n, float lo, float hi, size_t extra = 0) {
    std::uniform_real_distribution<float> d(lo, hi);
    std::vector<float> v(n + extra);
    for (auto& x : v) x = d(rng);
    return v;
}

// The summary line run.sh shows and the exit status: non-zero when any check failed.
inline int finish() {
    printf("FAILS %d\n", fails);
    return fails != 0;
}
