// The step's glue and optimizer kernels run on the host through emu.h: add_f32 (residual add,
// also in place), add_rows_f32 (row broadcast), clamp_f32 and clamp_bwd_f32 (clip_qkv: the
// clamp and its gradient mask, exact at ±c and NaN), adamw_step and the two-level gradient norm,
// each against a plain reference written here. Ragged lengths (n % 4 != 0, so the float4 paths
// have a scalar tail), aligned and offset-by-one buffers (scalar paths), grids smaller than the
// work (grid-stride loops), outputs poisoned with NaN and followed by guard elements that must
// survive. add, add_rows, the clamp and adamw are fp32 operation for operation, so they must match their
// references bit for bit (the host compiles with -ffp-contract=off, as the kernels use only
// round-to-nearest intrinsics); the gradient norm is fp64 and must agree to 1e-12.
// Build and run: cuda/emu/run.sh (needs g++ with C++20).
#include "emu.h"
#include "check.h"
#include <cstdio>
#include <random>
#include "../pointwise.cu"
#include "../adamw.cu"

static const float GUARD = 12345.678f;

// `off` guard elements, the data, 8 guard elements.
struct Buf {
    std::vector<float> v;
    size_t off, n;
    Buf(const std::vector<float>& data, size_t off_) : v(data.size() + off_ + 8, GUARD), off(off_), n(data.size()) {
        std::copy(data.begin(), data.end(), v.begin() + off);
    }
    float* p() { return v.data() + off; }
    bool guards_ok() const {
        for (size_t i = 0; i < v.size(); ++i)
            if ((i < off || i >= off + n) && memcmp(&v[i], &GUARD, 4)) return false;
        return true;
    }
};
// Number of elements of `a` (n of them) whose bits differ from `b`.
static double bit_diffs(const float* a, const float* b, size_t n) {
    double bad = 0;
    for (size_t i = 0; i < n; ++i) bad += memcmp(&a[i], &b[i], 4) != 0;
    return bad;
}

int main() {
    rng.seed(3);
    char name[160];
    // ---- add_f32: out = a + b, separate output and in place (out aliases a) ----
    for (size_t off : {0, 1}) for (unsigned long long n : {1ull, 4ull, 37ull, 1027ull}) {
        const auto a = uni(n, -3, 3), b = uni(n, -3, 3);
        std::vector<float> ref(n);
        for (size_t i = 0; i < n; ++i) ref[i] = a[i] + b[i];
        Buf A(a, off), B(b, off), O(std::vector<float>(n, NAN), off);
        launch({2}, {256}, [&] { add_f32(O.p(), A.p(), B.p(), n); });
        snprintf(name, 160, "add n=%llu off=%zu (bit diffs)", n, off);
        report(name, bit_diffs(O.p(), ref.data(), n) + !O.guards_ok() + !A.guards_ok(), 0.5);
        launch({1}, {256}, [&] { add_f32(A.p(), A.p(), B.p(), n); });
        snprintf(name, 160, "add in place n=%llu off=%zu (bit diffs)", n, off);
        report(name, bit_diffs(A.p(), ref.data(), n) + !A.guards_ok(), 0.5);
    }
    // ---- add_rows_f32: x[r, c] += v[c] ----
    for (size_t off : {0, 1}) for (unsigned long long d : {1ull, 37ull, 256ull}) {
        const unsigned long long n = 9;
        const auto x = uni(n * d, -3, 3), v = uni(d, -1, 1);
        std::vector<float> ref(x);
        for (size_t r = 0; r < n; ++r)
            for (size_t c = 0; c < d; ++c) ref[r * d + c] = x[r * d + c] + v[c];
        Buf X(x, off), V(v, 3 - off);
        launch({3}, {256}, [&] { add_rows_f32(X.p(), V.p(), n, d); });
        snprintf(name, 160, "add_rows n=%llu d=%llu off=%zu (bit diffs)", n, d, off);
        report(name, bit_diffs(X.p(), ref.data(), n * d) + !X.guards_ok(), 0.5);
    }
    // ---- clamp_f32 / clamp_bwd_f32: x in place to [-c, c]; dx kept where -c <= x <= c ----
    for (size_t off : {0, 1}) for (unsigned long long n : {1ull, 4ull, 37ull, 1031ull}) {
        const float c = 0.75f;
        auto x = uni(n, -2, 2);
        // exact edges where there is room: ±c pass the gradient, NaN and beyond do not
        const float edges[] = {c, -c, NAN, 0.0f, 1e30f, -1e30f};
        for (size_t k = 0; k < 6 && k < n; ++k) x[(k * 7) % n] = edges[k];
        const auto dy = uni(n, -1, 1);
        std::vector<float> ref(n), gref(n);
        for (size_t i = 0; i < n; ++i) {
            ref[i] = x[i] < -c ? -c : (x[i] > c ? c : x[i]);
            gref[i] = (x[i] >= -c && x[i] <= c) ? dy[i] : 0.0f;
        }
        Buf X(x, off), D(dy, off), Xin(x, off);
        launch({2}, {256}, [&] { clamp_f32(X.p(), n, c); });
        launch({1}, {256}, [&] { clamp_bwd_f32(D.p(), Xin.p(), n, c); });
        snprintf(name, 160, "clamp n=%llu off=%zu (bit diffs)", n, off);
        report(name, bit_diffs(X.p(), ref.data(), n) + !X.guards_ok(), 0.5);
        snprintf(name, 160, "clamp_bwd n=%llu off=%zu (bit diffs)", n, off);
        report(name, bit_diffs(D.p(), gref.data(), n) + !D.guards_ok() + !Xin.guards_ok(), 0.5);
    }
    // ---- adamw_step: three steps, host clip scale and device norm, with and without bf16 ----
    for (size_t off : {0, 1}) for (int with_bf16 : {0, 1, 2}) for (int dev_norm : {0, 1}) {
        // with_bf16 = 2: the bf16 copy one element past the other buffers' offset (misaligned).
        const size_t boff = off + (with_bf16 == 2);
        const unsigned long long n = 1031, no_decay = 13;
        auto p = uni(n, -1, 1);
        std::vector<float> m(n, 0.f), v(n, 0.f), rp(p), rm(m), rv(v);
        Buf P(p, off), M(m, off), Vb(v, off);
        std::vector<__nv_bfloat16> pb(n + 3, __nv_bfloat16{0xdead});
        __nv_bfloat16* pbp = with_bf16 ? pb.data() + boff : nullptr;
        double bad = 0;
        for (int step = 1; step <= 3; ++step) {
            auto gv = uni(n, -2, 2);
            Buf G(gv, off);
            const float lr = 1e-3f * step, b1 = 0.9f, b2 = 0.95f, eps = 1e-5f, wd = 0.1f;
            const float bias1 = 1.0f - (float)std::pow(0.9, step), bias2 = 1.0f - (float)std::pow(0.95, step);
            // Device-norm clipping: a norm above max_norm gives s = max_norm / (norm + 1e-6).
            const float norm = 7.5f, max_norm = 1.0f;
            const float s = dev_norm ? max_norm / (norm + 1e-6f) : 0.75f;
            AdamWArgs a{lr, b1, b2, eps, wd, dev_norm ? 123.0f : s, bias1, bias2, no_decay};
            for (size_t i = 0; i < n; ++i) {
                const float gi = gv[i] * s;
                float pi = rp[i];
                if (i >= no_decay) pi = pi - (lr * wd) * pi;
                const float mi = b1 * rm[i] + (1.0f - b1) * gi;
                const float vi = b2 * rv[i] + ((1.0f - b2) * gi) * gi;
                const float upd = (lr * (mi / bias1)) / (std::sqrt(vi / bias2) + eps);
                rp[i] = pi - upd;
                rm[i] = mi;
                rv[i] = vi;
            }
            launch({2}, {256}, [&] {
                adamw_step(P.p(), G.p(), M.p(), Vb.p(), pbp, n, a, dev_norm ? &norm : nullptr, max_norm);
            });
            bad += bit_diffs(P.p(), rp.data(), n) + bit_diffs(M.p(), rm.data(), n) + bit_diffs(Vb.p(), rv.data(), n);
        }
        if (with_bf16)
            for (size_t i = 0; i < n; ++i) bad += pb[boff + i].x != __float2bfloat16_rn(rp[i]).x;
        bad += !P.guards_ok() + !M.guards_ok() + !Vb.guards_ok();
        if (with_bf16) bad += pb[boff + n].x != 0xdead || (boff && pb[0].x != 0xdead);
        snprintf(name, 160, "adamw 3 steps off=%zu bf16=%d device-norm=%d (bit diffs)", off, with_bf16, dev_norm);
        report(name, bad, 0.5);
    }
    // ---- gradient norm: partial sums per 16384-element chunk, then one block over them ----
    for (size_t off : {0, 1}) for (unsigned long long n : {5ull, 16384ull, 40003ull}) {
        const auto g = uni(n, -1, 1);
        Buf G(g, off);
        const unsigned long long parts = (n + GRAD_NORM_CHUNK - 1) / GRAD_NORM_CHUNK;
        std::vector<double> partials(parts + 1, -1.0);
        float out = NAN;
        launch({(unsigned)parts}, {GRAD_NORM_THREADS}, [&] { grad_norm_partials(G.p(), n, partials.data()); });
        launch({1}, {1024}, [&] { grad_norm_finish(partials.data(), parts, &out); });
        double worst = 0, total = 0;
        for (unsigned long long b = 0; b < parts; ++b) {
            long double s = 0;
            for (unsigned long long i = b * GRAD_NORM_CHUNK; i < std::min(n, (b + 1) * GRAD_NORM_CHUNK); ++i)
                s += (long double)g[i] * g[i];
            worst = std::max(worst, (double)std::fabs((partials[b] - (double)s) / (double)s));
            total += (double)s;
        }
        if (partials[parts] != -1.0) worst = 1e9;  // written past the last chunk
        snprintf(name, 160, "grad_norm partials n=%llu off=%zu", n, off);
        report(name, worst, 1e-12);
        snprintf(name, 160, "grad_norm n=%llu off=%zu", n, off);
        report(name, std::fabs(out - std::sqrt(total)) / std::sqrt(total), 1e-6);
    }
    return finish();
}
