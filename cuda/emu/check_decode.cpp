// The decode kernels of cuda/decode.cu (kv_append, attention_decode_r{1,2,4,8}) run on the host
// through emu.h, against a double-precision reference written here. Several cache rows at
// different positions in one call (a 6-token prefill, single tokens at positions 0 and 3, a
// token at the last position), head widths 16, 64, 70 (a ragged last lane group) and 200,
// ITI shift on and off with a per-token flag. Cache slots that no token of the call may read
// are poisoned with NaN (any read past a row's position shows), outputs are poisoned and
// followed by guard elements that must survive. Relative error limit 1e-5 (fp32 arithmetic,
// double reference); the cache slots the call does not write must keep their bits; the
// shifted output must equal unshifted + shift bit for bit on flagged tokens and be unchanged on
// the others; a second launch must reproduce the first bit for bit.
// Build and run: cuda/emu/run.sh (needs g++ with C++20).
#include "emu.h"
#include "check.h"
#include <cstdio>
#include <random>
#include <algorithm>
#include "../decode.cu"

static const float GUARD = 12345.678f;
// ‖a − b‖ / ‖b‖ (1e9 when a holds a non-finite value).
static double rel(const float* a, const double* b, size_t n) {
    double d = 0, r = 0;
    for (size_t i = 0; i < n; ++i) {
        if (!std::isfinite(a[i])) return 1e9;
        d += (a[i] - b[i]) * (a[i] - b[i]);
        r += b[i] * b[i];
    }
    return std::sqrt(d / std::max(r, 1e-300));
}
static size_t bit_diffs(const float* a, const float* b, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; ++i) k += memcmp(a + i, b + i, 4) != 0;
    return k;
}

struct Tok { unsigned row, pos, shifted; };

int main() {
    rng.seed(11);
    char name[160];
    const unsigned H = 3, rows = 4, t_max = 11;
    // Row 0 prefills positions 0..5; row 1 decodes position 0; row 2 position 3 (0..2 cached by
    // an earlier call); row 3 the last position t_max − 1 (0..t_max−2 cached earlier).
    std::vector<Tok> toks;
    for (unsigned p = 0; p < 6; ++p) toks.push_back({0, p, p >= 4});
    toks.push_back({1, 0, 1});
    toks.push_back({2, 3, 0});
    toks.push_back({3, t_max - 1, 1});
    std::vector<unsigned> cached_before = {0, 0, 3, t_max - 1};  // valid positions before the call
    const unsigned n = toks.size();
    std::vector<unsigned> meta;
    for (auto& t : toks) meta.insert(meta.end(), {t.row, t.pos, t.shifted});

    for (unsigned dh : {16u, 64u, 70u, 200u}) {
        const unsigned D = H * dh, half = dh / 2;
        const size_t clen = (size_t)rows * H * t_max * dh;
        // RoPE table rounded from double, as the host builds it.
        std::vector<float> table(2 * t_max * half);
        for (unsigned p = 0; p < t_max; ++p)
            for (unsigned i = 0; i < half; ++i) {
                double a = p * std::pow(10000.0, -(2.0 * i) / dh);
                table[p * half + i] = (float)std::cos(a);
                table[t_max * half + p * half + i] = (float)std::sin(a);
            }
        auto qkv0 = uni((size_t)n * 3 * D, -1.5f, 1.5f);
        // Cache: rows' earlier positions hold random values, every other slot NaN.
        std::vector<float> kc0(clen, NAN), vc0(clen, NAN);
        auto at = [&](unsigned r, unsigned h, unsigned p) { return (((size_t)r * H + h) * t_max + p) * dh; };
        for (unsigned r = 0; r < rows; ++r)
            for (unsigned h = 0; h < H; ++h)
                for (unsigned p = 0; p < cached_before[r]; ++p) {
                    auto a = uni(dh, -1.5f, 1.5f), b = uni(dh, -2.f, 2.f);
                    std::copy(a.begin(), a.end(), kc0.begin() + at(r, h, p));
                    std::copy(b.begin(), b.end(), vc0.begin() + at(r, h, p));
                }
        // ---- kv_append ----
        std::vector<float> qkv = qkv0, kc = kc0, vc = vc0;
        launch({3}, {DEC_THREADS}, [&] { kv_append(qkv.data(), kc.data(), vc.data(), table.data(), meta.data(), n, H, dh, t_max); });
        std::vector<double> rq((size_t)n * 3 * D);
        std::vector<char> written(clen, 0);
        double ek = 0, rk = 0;
        for (unsigned i = 0; i < n; ++i) {
            const auto& t = toks[i];
            for (size_t c = 0; c < 3 * D; ++c) rq[i * 3 * D + c] = qkv0[i * 3 * D + c];
            for (unsigned part = 0; part < 2; ++part)
                for (unsigned h = 0; h < H; ++h)
                    for (unsigned e = 0; e < half; ++e) {
                        const size_t o = i * 3 * D + part * D + h * dh;
                        const double c = table[t.pos * half + e], s = table[t_max * half + t.pos * half + e];
                        const double a = qkv0[o + e], b = qkv0[o + e + half];
                        rq[o + e] = a * c - b * s;
                        rq[o + e + half] = b * c + a * s;
                    }
            for (unsigned h = 0; h < H; ++h)
                for (unsigned e = 0; e < dh; ++e) {
                    const size_t a = at(t.row, h, t.pos) + e;
                    written[a] = 1;
                    const double k = rq[i * 3 * D + D + h * dh + e], v = qkv0[i * 3 * D + 2 * D + h * dh + e];
                    if (!std::isfinite(kc[a]) || !std::isfinite(vc[a])) { ek = 1e9; continue; }
                    ek += (kc[a] - k) * (kc[a] - k) + (vc[a] - v) * (vc[a] - v);
                    rk += k * k + v * v;
                }
        }
        snprintf(name, 160, "kv_append dh=%u: rotated q,k,v in qkv", dh);
        report(name, rel(qkv.data(), rq.data(), rq.size()), 1e-5);
        snprintf(name, 160, "kv_append dh=%u: cache slots written", dh);
        report(name, ek >= 1e9 ? 1e9 : std::sqrt(ek / rk), 1e-5);
        size_t kept = 0;
        for (size_t a = 0; a < clen; ++a)
            if (!written[a]) kept += memcmp(&kc[a], &kc0[a], 4) != 0 || memcmp(&vc[a], &vc0[a], 4) != 0;
        snprintf(name, 160, "kv_append dh=%u: other slots unchanged (bit diffs)", dh);
        report(name, kept, 0.5);

        // ---- attention_decode ----
        auto shift = uni(D, -3.f, 3.f);
        const float scale = 1.0f / std::sqrt((float)dh);
        std::vector<double> rz((size_t)n * D);
        for (unsigned i = 0; i < n; ++i) {
            const auto& t = toks[i];
            for (unsigned h = 0; h < H; ++h) {
                std::vector<double> s(t.pos + 1);
                double mx = -1e300;
                for (unsigned j = 0; j <= t.pos; ++j) {
                    double dot = 0;
                    for (unsigned e = 0; e < dh; ++e) dot += (double)qkv[i * 3 * D + h * dh + e] * kc[at(t.row, h, j) + e];
                    s[j] = dot * scale;
                    mx = std::max(mx, s[j]);
                }
                double sum = 0;
                for (auto& x : s) { x = std::exp(x - mx); sum += x; }
                for (unsigned e = 0; e < dh; ++e) {
                    double o = 0;
                    for (unsigned j = 0; j <= t.pos; ++j) o += s[j] / sum * vc[at(t.row, h, j) + e];
                    rz[(size_t)i * D + h * dh + e] = o;
                }
            }
        }
        // Slots past each row's last position stay NaN: a read beyond `pos` poisons z.
        std::vector<float> zs[2];
        for (int with_shift : {0, 1}) {
            std::vector<float> z((size_t)n * D + 8, NAN);
            for (int g = 0; g < 8; ++g) z[(size_t)n * D + g] = GUARD;
            const float* sh = with_shift ? shift.data() : nullptr;
            auto run = [&](std::vector<float>& out) {
                if (dh <= 32) launch({n * H}, {DEC_THREADS}, [&] { attention_decode_r1(out.data(), qkv.data(), kc.data(), vc.data(), meta.data(), sh, H, dh, t_max, scale); });
                else if (dh <= 64) launch({n * H}, {DEC_THREADS}, [&] { attention_decode_r2(out.data(), qkv.data(), kc.data(), vc.data(), meta.data(), sh, H, dh, t_max, scale); });
                else if (dh <= 128) launch({n * H}, {DEC_THREADS}, [&] { attention_decode_r4(out.data(), qkv.data(), kc.data(), vc.data(), meta.data(), sh, H, dh, t_max, scale); });
                else launch({n * H}, {DEC_THREADS}, [&] { attention_decode_r8(out.data(), qkv.data(), kc.data(), vc.data(), meta.data(), sh, H, dh, t_max, scale); });
            };
            run(z);
            size_t guards = 0;
            for (int g = 0; g < 8; ++g) guards += z[(size_t)n * D + g] != GUARD;
            snprintf(name, 160, "attention_decode dh=%u shift=%d: guards intact", dh, with_shift);
            report(name, guards, 0.5);
            if (!with_shift) {
                snprintf(name, 160, "attention_decode dh=%u: z vs double reference", dh);
                report(name, rel(z.data(), rz.data(), rz.size()), 1e-5);
            }
            std::vector<float> again((size_t)n * D + 8, NAN);
            run(again);
            snprintf(name, 160, "attention_decode dh=%u shift=%d: rerun (bit diffs)", dh, with_shift);
            report(name, bit_diffs(z.data(), again.data(), (size_t)n * D), 0.5);
            zs[with_shift] = z;
        }
        size_t bad = 0, flagged = 0;
        for (unsigned i = 0; i < n; ++i)
            for (unsigned c = 0; c < D; ++c) {
                const float want = toks[i].shifted ? zs[0][(size_t)i * D + c] + shift[c] : zs[0][(size_t)i * D + c];
                bad += memcmp(&want, &zs[1][(size_t)i * D + c], 4) != 0;
                flagged += toks[i].shifted;
            }
        snprintf(name, 160, "attention_decode dh=%u: shift on flagged tokens only (bit diffs)", dh);
        report(name, flagged > 0 ? (double)bad : 1e9, 0.5);
    }
    return finish();
}
