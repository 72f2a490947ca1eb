// The attention kernels of cuda/attention.cu (forward, Δ, dK/dV, dQ) run on the host through
// emu.h and mma.h, against a double-precision reference written here that is fed the same
// bf16-rounded q, k, v and dz (the kernels get fp32 dz and round it themselves). Small ragged shapes (T not a multiple of the 64-row tile, T = 1),
// dh 32, 64 and 128, aligned (float4) and offset-by-one (scalar) buffers, outputs poisoned with
// NaN and followed by guard elements that must survive. Norm-wise relative error limit 1e-2
// (bf16 operands and bf16 P, dS); the shifted forward must equal z + shift bit for bit, and a
// second forward and backward must reproduce the first bit for bit.
// Build and run: cuda/emu/run.sh (needs g++ with C++20).
#include "emu.h"
#include "check.h"
#include <cstdio>
#include <random>
#include <algorithm>
#include "../attention.cu"

static const float GUARD = 12345.678f;

static float bf(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
// ‖a − b‖ / ‖b‖ over n rows of w elements at a[i·stride + off + c], b likewise; where the
// reference is exactly zero (T = 1: dq = dk = 0), the absolute ‖a‖ instead.
static double rel(const float* a, const std::vector<double>& b, size_t n, size_t stride, size_t off, size_t w) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; ++i)
        for (size_t c = 0; c < w; ++c) {
            const float x = a[i * stride + off + c];
            const double y = b[i * stride + off + c];
            if (!std::isfinite(x)) return 1e9;
            d += (x - y) * (x - y);
            r += y * y;
        }
    return r == 0 ? std::sqrt(d) : std::sqrt(d / r);
}

// One device-like buffer: `off` guard elements, n data elements, 8 guard elements.
struct Buf {
    std::vector<float> v;
    size_t off, n;
    Buf(size_t n_, size_t off_, float fill) : v(n_ + off_ + 8, GUARD), off(off_), n(n_) {
        std::fill(v.begin() + off, v.begin() + off + n, fill);
    }
    float* p() { return v.data() + off; }
    bool guards_ok() const {
        for (size_t i = 0; i < off; ++i)
            if (memcmp(&v[i], &GUARD, 4)) return false;
        for (size_t i = off + n; i < v.size(); ++i)
            if (memcmp(&v[i], &GUARD, 4)) return false;
        return true;
    }
};

template <int DH>
static void fwd(float* z, float* lse, const float* qkv, const float* shift, int B, int T, int H) {
    const unsigned nq = (T + 63) / 64;
    launch({nq, (unsigned)H, (unsigned)B}, {ATT_THREADS},
           [&] { attention_fwd_impl<DH>(z, lse, qkv, shift, T, H, 1.0f / std::sqrt((float)DH)); });
}
template <int DH>
static void bwd(float* dqkv, float* delta, const float* dz, const float* z, const float* qkv, const float* lse,
                int B, int T, int H) {
    const float scale = 1.0f / std::sqrt((float)DH);
    const unsigned rows = B * T * H, nt = (T + 63) / 64;
    launch({(rows + ATT_WARPS - 1) / ATT_WARPS}, {ATT_THREADS},
           [&] { attention_bwd_delta_impl(delta, dz, z, B, T, H, DH); });
    launch({nt, (unsigned)H, (unsigned)B}, {ATT_THREADS},
           [&] { attention_bwd_dkdv_impl<DH>(dqkv, dz, qkv, lse, delta, T, H, scale); });
    launch({nt, (unsigned)H, (unsigned)B}, {ATT_THREADS},
           [&] { attention_bwd_dq_impl<DH>(dqkv, dz, qkv, lse, delta, T, H, scale); });
}

template <int DH>
static void check(int B, int T, int H, size_t off) {
    const int D = H * DH;
    const size_t nqkv = (size_t)B * T * 3 * D, nz = (size_t)B * T * D, nl = (size_t)B * H * T;
    char name[160];
    snprintf(name, 160, "B=%d T=%d H=%d dh=%d off=%zu", B, T, H, DH, off);
    // q, k scaled so the scores have a standard deviation of about 2; all inputs bf16-exact.
    std::normal_distribution<float> nd(0.f, 1.f);
    const float qs = std::sqrt(2.0f) * std::pow((float)DH, 0.25f) / std::sqrt((float)DH);
    Buf qkv(nqkv, off, 0), dz(nz, off, 0), shift(D, off, 0);
    for (size_t r = 0; r < (size_t)B * T; ++r)
        for (int c = 0; c < 3 * D; ++c) qkv.p()[r * 3 * D + c] = bf(nd(rng) * (c < 2 * D ? qs * 1.2f : 1.0f));
    // dz is NOT bf16-exact (in training it is an fp32 gradient): the kernels must round it
    // wherever it enters a bf16 product, Δ included, or T = 1 yields dq, dk ≠ 0.
    for (size_t k = 0; k < nz; ++k) dz.p()[k] = nd(rng);
    for (int k = 0; k < D; ++k) shift.p()[k] = nd(rng);

    // Reference (double).
    const double scale = 1.0 / std::sqrt((double)DH);
    std::vector<double> rz(nz), rl(nl), rg(nqkv, 0.0);
    const float* Q = qkv.p();
    auto q = [&](int b, int t, int h, int c) { return (double)Q[((size_t)b * T + t) * 3 * D + h * DH + c]; };
    auto k = [&](int b, int t, int h, int c) { return (double)Q[((size_t)b * T + t) * 3 * D + D + h * DH + c]; };
    auto v = [&](int b, int t, int h, int c) { return (double)Q[((size_t)b * T + t) * 3 * D + 2 * D + h * DH + c]; };
    auto g = [&](int b, int t, int h, int c) { return (double)bf(dz.p()[((size_t)b * T + t) * D + h * DH + c]); };
    for (int b = 0; b < B; ++b)
        for (int h = 0; h < H; ++h) {
            std::vector<double> P((size_t)T * T, 0.0);
            for (int i = 0; i < T; ++i) {
                double mx = -1e300;
                for (int j = 0; j <= i; ++j) {
                    double s = 0;
                    for (int c = 0; c < DH; ++c) s += q(b, i, h, c) * k(b, j, h, c);
                    P[(size_t)i * T + j] = s * scale;
                    mx = std::max(mx, s * scale);
                }
                double sum = 0;
                for (int j = 0; j <= i; ++j) sum += std::exp(P[(size_t)i * T + j] - mx);
                const double l = mx + std::log(sum);
                rl[((size_t)b * H + h) * T + i] = l;
                for (int j = 0; j <= i; ++j) P[(size_t)i * T + j] = std::exp(P[(size_t)i * T + j] - l);
                for (int c = 0; c < DH; ++c) {
                    double o = 0;
                    for (int j = 0; j <= i; ++j) o += P[(size_t)i * T + j] * v(b, j, h, c);
                    rz[((size_t)b * T + i) * D + h * DH + c] = o;
                }
            }
            for (int i = 0; i < T; ++i) {
                double delta = 0;
                for (int c = 0; c < DH; ++c) delta += g(b, i, h, c) * rz[((size_t)b * T + i) * D + h * DH + c];
                for (int j = 0; j <= i; ++j) {
                    const double p = P[(size_t)i * T + j];
                    double dp = 0;
                    for (int c = 0; c < DH; ++c) dp += g(b, i, h, c) * v(b, j, h, c);
                    const double ds = p * (dp - delta) * scale;
                    double* gq = &rg[((size_t)b * T + i) * 3 * D + h * DH];
                    double* gk = &rg[((size_t)b * T + j) * 3 * D + D + h * DH];
                    double* gv = &rg[((size_t)b * T + j) * 3 * D + 2 * D + h * DH];
                    for (int c = 0; c < DH; ++c) {
                        gq[c] += ds * k(b, j, h, c);
                        gk[c] += ds * q(b, i, h, c);
                        gv[c] += p * g(b, i, h, c);
                    }
                }
            }
        }

    // Forward, plain and shifted.
    Buf z(nz, off, NAN), lse(nl, off, NAN), zs(nz, off, NAN), lses(nl, off, NAN);
    fwd<DH>(z.p(), lse.p(), qkv.p(), nullptr, B, T, H);
    fwd<DH>(zs.p(), lses.p(), qkv.p(), shift.p(), B, T, H);
    char w[200];
    snprintf(w, 200, "fwd z   %s", name);
    report(w, rel(z.p(), rz, nz, 1, 0, 1), 1e-2);
    snprintf(w, 200, "fwd lse %s", name);
    report(w, rel(lse.p(), rl, nl, 1, 0, 1), 1e-2);
    double bad = !z.guards_ok() + !lse.guards_ok() + !zs.guards_ok() + !lses.guards_ok();
    for (size_t r = 0; r < (size_t)B * T; ++r)
        for (int c = 0; c < D; ++c) {
            const float want = z.p()[r * D + c] + shift.p()[c];
            bad += memcmp(&want, &zs.p()[r * D + c], 4) != 0;
        }
    bad += memcmp(lse.p(), lses.p(), nl * 4) != 0;
    snprintf(w, 200, "fwd shift = z + shift, guards (bad count) %s", name);
    report(w, bad, 0.5);

    // Backward.
    Buf dqkv(nqkv, off, NAN), delta(nl, off, NAN);
    bwd<DH>(dqkv.p(), delta.p(), dz.p(), z.p(), qkv.p(), lse.p(), B, T, H);
    const char* third[3] = {"dq", "dk", "dv"};
    double total = 0;
    for (double x : rg) total += x * x;
    total = std::sqrt(total);
    for (int t = 0; t < 3; ++t) {
        double r = 0;
        for (size_t i = 0; i < (size_t)B * T; ++i)
            for (int c = 0; c < D; ++c) r += rg[i * 3 * D + t * D + c] * rg[i * 3 * D + t * D + c];
        if (r == 0) {  // T = 1: dq = dk = 0 exactly; allow fp32 rounding only
            snprintf(w, 200, "bwd %s  %s (reference 0: ‖out‖ / ‖dqkv_ref‖)", third[t], name);
            report(w, rel(dqkv.p(), rg, (size_t)B * T, 3 * D, t * D, D) / total, 1e-5);
        } else {
            snprintf(w, 200, "bwd %s  %s", third[t], name);
            report(w, rel(dqkv.p(), rg, (size_t)B * T, 3 * D, t * D, D), 1e-2);
        }
    }
    // Repeat both passes: identical bits.
    Buf z2(nz, off, NAN), lse2(nl, off, NAN), dqkv2(nqkv, off, NAN), delta2(nl, off, NAN);
    fwd<DH>(z2.p(), lse2.p(), qkv.p(), nullptr, B, T, H);
    bwd<DH>(dqkv2.p(), delta2.p(), dz.p(), z.p(), qkv.p(), lse.p(), B, T, H);
    bad = !dqkv.guards_ok() + !delta.guards_ok() + (memcmp(z.v.data(), z2.v.data(), z.v.size() * 4) != 0) +
          (memcmp(lse.v.data(), lse2.v.data(), lse.v.size() * 4) != 0) +
          (memcmp(dqkv.v.data(), dqkv2.v.data(), dqkv.v.size() * 4) != 0);
    snprintf(w, 200, "bwd guards, rerun bit-identical (bad count) %s", name);
    report(w, bad, 0.5);
}

// The launcher (src/backend/cuda/attention.rs) sizes dynamic shared memory with its own copy of
// these formulas; its unit test pins the same numbers.
static_assert(attn_fwd_smem(128) == 112896 && attn_bwd_smem(128) == 123392, "smem layout changed");
static_assert(attn_fwd_smem(64) == 71936 && attn_bwd_smem(32) == 74240, "smem layout changed");
static_assert(attn_bwd_smem(128) <= sizeof(att_emu_smem), "emulated shared memory too small");

int main() {
    rng.seed(7);
    check<64>(1, 1, 1, 0);
    check<32>(2, 7, 3, 1);
    check<64>(2, 70, 2, 0);
    check<64>(1, 129, 1, 1);
    check<128>(1, 65, 2, 0);
    check<128>(1, 130, 1, 1);
    return finish();
}
