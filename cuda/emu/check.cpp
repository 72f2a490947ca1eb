// The training-step kernels (embedding, layernorm, SwiGLU, RoPE, cross-entropy) run on the host
// through emu.h, each against a plain double-precision reference written here: small ragged
// shapes, aligned (float4) and offset-by-one (scalar) buffers, outputs poisoned with NaN.
// Relative error limit 1e-5; the embedding gather and scatter-add must match bit for bit.
// Build and run: cuda/emu/run.sh (needs g++ with C++20).
#include "emu.h"
#include "check.h"
#include <cstdio>
#include <random>
#include <algorithm>
#include "../embedding.cu"
#include "../layernorm.cu"
#include "../pointwise.cu"
#include "../cross_entropy.cu"
static double rel(const float* a, const double* b, size_t n) { double d = 0, r = 0; for (size_t i = 0; i < n; ++i) { if (!std::isfinite(a[i])) return 1e9; d += (a[i] - b[i]) * (a[i] - b[i]); r += b[i] * b[i]; } return std::sqrt(d / std::max(r, 1e-300)); }
int main() {
    rng.seed(1);
    char name[128];
    for (int off : {0, 1}) for (unsigned d : {300u, 37u, 64u}) {
        unsigned n = 7, V = 37;
        auto wte = uni(V * d, -1, 1, 8); std::vector<unsigned> ids(n);
        for (auto& i : ids) i = rng() % 5;
        ids[2] = 36;
        std::vector<float> out(n * d + 8, NAN);
        float* o = out.data() + off; const float* w = wte.data() + off;
        launch({3}, {128}, [&] { embedding_fwd(o, ids.data(), w, n, d, V); });
        double bad = 0; for (unsigned i = 0; i < n; ++i) for (unsigned c = 0; c < d; ++c) bad += o[i * d + c] != w[ids[i] * d + c];
        snprintf(name, 128, "emb fwd d=%u off=%d", d, off); report(name, bad, 0.5);
        // backward
        auto dout = uni(n * d, -1, 1, 8); auto dw = uni(V * d, -1, 1, 8); auto ref = dw;
        std::vector<unsigned> pos(n); for (unsigned i = 0; i < n; ++i) pos[i] = i;
        std::stable_sort(pos.begin(), pos.end(), [&](unsigned a, unsigned b) { return ids[a] < ids[b]; });
        std::vector<unsigned> bid, bst;
        for (unsigned k = 0; k < n; ++k) { if (bid.empty() || bid.back() != ids[pos[k]]) { bid.push_back(ids[pos[k]]); bst.push_back(k); } }
        bst.push_back(n);
        float* g = dw.data() + off; const float* x = dout.data() + off;
        unsigned cols = d % 4 == 0 ? d / 4 : d;
        launch({(unsigned)bid.size(), (cols + 127) / 128}, {128}, [&] { embedding_bwd(g, x, bid.data(), bst.data(), pos.data(), bid.size(), d, V); });
        float* r = ref.data() + off;
        for (unsigned i = 0; i < n; ++i) for (unsigned c = 0; c < d; ++c) r[ids[i] * d + c] += x[i * d + c];
        bad = 0; for (size_t i = 0; i < ref.size(); ++i) bad += memcmp(&ref[i], &dw[i], 4) != 0;
        snprintf(name, 128, "emb bwd d=%u off=%d (bit diffs)", d, off); report(name, bad, 0.5);
    }
    // Layernorm: both versions (rere = 1: *_reread), rows that fit the cached registers
    // (d = 300, 2048 at off 0), rows that do not (d = 4100) and the scalar path (off 1, d = 37).
    for (int rere : {0, 1}) for (int off : {0, 1}) for (unsigned d : {300u, 37u, 2048u, 4100u}) {
        unsigned n = 7;
        auto xs = uni(n * d, -2, 3, 8); float* x = xs.data() + off;
        std::vector<float> out(n * d + 8, NAN), mean(n + 8, NAN), rstd(n + 8, NAN);
        launch({(n + 3) / 4}, {128}, [&] { (rere ? layernorm_fwd_reread : layernorm_fwd)(out.data() + off, mean.data() + off, rstd.data() + off, x, n, d, 1e-5f); });
        std::vector<double> ro(n * d), rm(n), rr(n);
        for (unsigned i = 0; i < n; ++i) { double s = 0; for (unsigned c = 0; c < d; ++c) s += x[i * d + c]; double mu = s / d, q = 0; for (unsigned c = 0; c < d; ++c) q += (x[i * d + c] - mu) * (x[i * d + c] - mu); double rs = 1 / std::sqrt(q / d + 1e-5); rm[i] = mu; rr[i] = rs; for (unsigned c = 0; c < d; ++c) ro[i * d + c] = (x[i * d + c] - mu) * rs; }
        snprintf(name, 128, "ln%s fwd out d=%u off=%d", rere ? "_reread" : "", d, off); report(name, rel(out.data() + off, ro.data(), n * d), 1e-5);
        snprintf(name, 128, "ln%s fwd mean d=%u off=%d", rere ? "_reread" : "", d, off); report(name, rel(mean.data() + off, rm.data(), n), 1e-5);
        snprintf(name, 128, "ln%s fwd rstd d=%u off=%d", rere ? "_reread" : "", d, off); report(name, rel(rstd.data() + off, rr.data(), n), 1e-5);
        for (int acc : {0, 1}) {
            auto dy = uni(n * d, -1, 1, 8); auto dx = uni(n * d, -1, 1, 8); std::vector<double> rd(n * d);
            const float* xh = out.data() + off; const float* g = dy.data() + off; float* dxp = dx.data() + off;
            for (unsigned i = 0; i < n; ++i) { double a = 0, b = 0; for (unsigned c = 0; c < d; ++c) { a += g[i * d + c]; b += (double)g[i * d + c] * xh[i * d + c]; } a /= d; b /= d; for (unsigned c = 0; c < d; ++c) rd[i * d + c] = rstd[off + i] * (g[i * d + c] - a - xh[i * d + c] * b) + (acc ? dxp[i * d + c] : 0.0); }
            if (!acc) for (unsigned k = 0; k < n * d; ++k) dxp[k] = NAN;
            launch({(n + 3) / 4}, {128}, [&] { (rere ? layernorm_bwd_reread : layernorm_bwd)(dxp, g, xh, rstd.data() + off, n, d, acc); });
            snprintf(name, 128, "ln%s bwd d=%u off=%d acc=%d", rere ? "_reread" : "", d, off, acc); report(name, rel(dxp, rd.data(), n * d), 1e-5);
        }
    }
    for (int rere : {0, 1}) for (int off : {0, 1}) for (unsigned d : {300u, 37u, 2048u, 4100u}) {
        unsigned n = 7;
        auto as = uni(n * d, -2, 3, 8); auto bs = uni(n * d, -1, 1, 8);
        const float* A = as.data() + off; const float* Bp = bs.data() + off;
        std::vector<float> out(n * d + 8, NAN), xs(n * d + 8, NAN), mean(n + 8, NAN), rstd(n + 8, NAN);
        launch({(n + 3) / 4}, {128}, [&] { (rere ? layernorm_fwd_residual_reread : layernorm_fwd_residual)(out.data() + off, mean.data() + off, rstd.data() + off, xs.data() + off, A, Bp, n, d, 1e-5f); });
        std::vector<double> ro(n * d), rm(n), rr(n); double bad = 0;
        for (unsigned i = 0; i < n * d; ++i) { float v = A[i] + Bp[i]; bad += memcmp(&v, &xs[off + i], 4) != 0; }
        for (unsigned i = 0; i < n; ++i) { double s = 0; for (unsigned c = 0; c < d; ++c) s += (float)(A[i * d + c] + Bp[i * d + c]); double mu = s / d, q = 0; for (unsigned c = 0; c < d; ++c) { double v = (float)(A[i * d + c] + Bp[i * d + c]) - mu; q += v * v; } double rs = 1 / std::sqrt(q / d + 1e-5); rm[i] = mu; rr[i] = rs; for (unsigned c = 0; c < d; ++c) ro[i * d + c] = ((float)(A[i * d + c] + Bp[i * d + c]) - mu) * rs; }
        snprintf(name, 128, "ln%s fwd+res xsum d=%u off=%d (bit diffs)", rere ? "_reread" : "", d, off); report(name, bad, 0.5);
        snprintf(name, 128, "ln%s fwd+res out d=%u off=%d", rere ? "_reread" : "", d, off); report(name, rel(out.data() + off, ro.data(), n * d), 1e-5);
        snprintf(name, 128, "ln%s fwd+res mean d=%u off=%d", rere ? "_reread" : "", d, off); report(name, rel(mean.data() + off, rm.data(), n), 1e-5);
        snprintf(name, 128, "ln%s fwd+res rstd d=%u off=%d", rere ? "_reread" : "", d, off); report(name, rel(rstd.data() + off, rr.data(), n), 1e-5);
    }
    for (int off : {0, 1}) for (unsigned long long f : {300ull, 37ull}) {
        unsigned long long n = 5;
        auto gu = uni(n * 2 * f, -6, 6, 8); auto dh = uni(n * f, -1, 1, 8);
        std::vector<float> h(n * f + 8, NAN), dgu(n * 2 * f + 8, NAN);
        const float* G = gu.data() + off;
        launch({3}, {256}, [&] { swiglu_fwd(h.data() + off, G, n, f); });
        launch({2}, {256}, [&] { swiglu_bwd(dgu.data() + off, dh.data() + off, G, n, f); });
        std::vector<double> rh(n * f), rg(n * 2 * f);
        for (unsigned i = 0; i < n; ++i) for (unsigned j = 0; j < f; ++j) { double g = G[i * 2 * f + j], u = G[i * 2 * f + f + j], sg = 1 / (1 + std::exp(-g)), dd = dh[off + i * f + j]; rh[i * f + j] = g * sg * u; rg[i * 2 * f + f + j] = dd * g * sg; rg[i * 2 * f + j] = dd * u * sg * (1 + g * (1 - sg)); }
        snprintf(name, 128, "swiglu fwd f=%llu off=%d", f, off); report(name, rel(h.data() + off, rh.data(), n * f), 1e-5);
        snprintf(name, 128, "swiglu bwd f=%llu off=%d", f, off); report(name, rel(dgu.data() + off, rg.data(), n * 2 * f), 1e-5);
    }
    for (int tr : {0, 1}) {
        unsigned B = 2, T = 5, H = 3, dh = 10, D = H * dh, half = dh / 2; unsigned long long n = B * T;
        std::vector<float> tab(T * dh);
        for (unsigned p = 0; p < T; ++p) for (unsigned i = 0; i < half; ++i) { double a = p * std::pow(10000.0, -2.0 * i / dh); tab[p * half + i] = std::cos(a); tab[T * half + p * half + i] = std::sin(a); }
        auto q = uni(n * 3 * D, -2, 2, 8); auto orig = q; std::vector<double> ref(q.begin(), q.begin() + n * 3 * D);
        for (unsigned r = 0; r < n; ++r) for (unsigned hd = 0; hd < 2 * H; ++hd) for (unsigned i = 0; i < half; ++i) { size_t b = r * 3 * D + hd * dh + i; double c = tab[(r % T) * half + i], s = tab[T * half + (r % T) * half + i], a = orig[b], bb = orig[b + half]; if (tr) { ref[b] = a * c + bb * s; ref[b + half] = bb * c - a * s; } else { ref[b] = a * c - bb * s; ref[b + half] = bb * c + a * s; } }
        launch({2}, {256}, [&] { rope(q.data(), tab.data(), n, T, D, dh, tr); });
        snprintf(name, 128, "rope tr=%d", tr); report(name, rel(q.data(), ref.data(), n * 3 * D), 1e-5);
    }
    // Cross-entropy over bf16 logits: the reference is computed in double from the same bf16
    // values; losses within 1e-5; each gradient element must be bf16(reference) or one of its
    // two bf16 neighbours (the kernel rounds its fp32 value, the reference rounds a double).
    // V = 4096 and 1000 take the 16-byte path at off 0 (V % 8 == 0), 4097 and 37 the scalar one.
    for (int off : {0, 1}) for (unsigned V : {4096u, 4097u, 1000u, 37u}) for (int grad : {1, 0}) {
        unsigned n = 3;
        auto lg = uni(n * V, -8, 8, 8);
        std::vector<__nv_bfloat16> lb(lg.size());
        for (size_t i = 0; i < lg.size(); ++i) lb[i] = __float2bfloat16_rn(lg[i] + (i >= (size_t)off ? 40.0f * ((i - off) / V) - 40 : 0.0f));
        std::vector<unsigned> t = {5, V - 1, V / 2};
        if (V >= 4) t[0] = 3;
        __nv_bfloat16* L = lb.data() + off;
        std::vector<__nv_bfloat16> orig(L, L + n * V);
        auto X = [&](size_t i) { return (double)__bfloat162float(orig[i]); };
        std::vector<float> loss(n + 8, NAN);
        std::vector<double> rl(n), rg(n * V);
        for (unsigned i = 0; i < n; ++i) { double m = -1e300; for (unsigned j = 0; j < V; ++j) m = std::max(m, X(i * V + j)); double S = 0; for (unsigned j = 0; j < V; ++j) S += std::exp(X(i * V + j) - m); rl[i] = m + std::log(S) - X(i * V + t[i]); for (unsigned j = 0; j < V; ++j) rg[i * V + j] = (std::exp(X(i * V + j) - m) / S - (j == t[i])) / n; }
        launch({n}, {256}, [&] { cross_entropy_fwd_bwd(L, loss.data() + off, t.data(), n, V, 1.0f / n, grad); });
        snprintf(name, 128, "ce loss V=%u off=%d grad=%d", V, off, grad); report(name, rel(loss.data() + off, rl.data(), n), 1e-5);
        if (grad) {
            double bad = 0;
            for (size_t i = 0; i < (size_t)n * V; ++i) { int a = L[i].x, b = __float2bfloat16_rn((float)rg[i]).x; bad += std::abs(a - b) > 1; }
            snprintf(name, 128, "ce dlogits V=%u off=%d (elements off by > 1 bf16 ulp)", V, off); report(name, bad, 0.5);
        }
        else { double bad = memcmp(L, orig.data(), n * V * 2) != 0; snprintf(name, 128, "ce no-grad untouched V=%u off=%d", V, off); report(name, bad, 0.5); }
    }
    return finish();
}
