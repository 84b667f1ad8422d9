// CCM evidence for the frames whose evidence is written.
//
// For each pick k = (b, j): CCM = CWM[b, j] (tiled over channels) x I[b],
// split into its positive part max(CCM, 0) and the magnitude of its negative
// part max(-CCM, 0), each quantised to 16 bits exactly as the evidence format
// does on the host (src/evidence.rs, QuantCcm::new):
//
//   scale = max / 65535 (f64; 0 when the part is empty),
//   q     = clamp(round(v / scale), 0, 65535)   (f64, round half away from zero)
//
// Output per pick, u32: [max_pos bits, max_neg bits, then D*R*C values with
// the positive part in the low and the negative part in the high 16 bits].
// So only these 4 bytes a value, for the picked classes only, go back to the
// host. Inputs are contiguous f32: CWM [B, N, R, C], scaled image [B, D, R, C];
// picks are (b, j) pairs as u32.

#include "common.cuh"

#define EV_THREADS 256

namespace gcm {

// Grid: one block per pick. Writes the two maxima (as f32 bits) at the head
// of the pick's output row.
__device__ void ccm_max(const float* __restrict__ cwm, const float* __restrict__ img,
                        const uint32_t* __restrict__ picks, uint32_t* __restrict__ out,
                        uint64_t n, uint64_t d, uint64_t hw) {
    __shared__ float sp[EV_THREADS / 32], sn[EV_THREADS / 32];
    const uint64_t k = blockIdx.x;
    const uint64_t b = picks[2 * k], j = picks[2 * k + 1];
    const float* m = cwm + (b * n + j) * hw;
    const float* im = img + b * d * hw;
    // fmaxf ignores NaN, as f32::max does on the host.
    float mp = 0.0f, mn = 0.0f;
    for (uint64_t ch = 0; ch < d; ++ch) {
        for (uint64_t p = threadIdx.x; p < hw; p += EV_THREADS) {
            const float v = im[ch * hw + p] * m[p];
            mp = fmaxf(mp, v);
            mn = fmaxf(mn, -v);
        }
    }
    mp = warp_max(mp);
    mn = warp_max(mn);
    if ((threadIdx.x & 31u) == 0) {
        sp[threadIdx.x >> 5] = mp;
        sn[threadIdx.x >> 5] = mn;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        float a = 0.0f, c = 0.0f;
        for (int w = 0; w < EV_THREADS / 32; ++w) {
            a = fmaxf(a, sp[w]);
            c = fmaxf(c, sn[w]);
        }
        uint32_t* row = out + k * (2 + d * hw);
        row[0] = __float_as_uint(a);
        row[1] = __float_as_uint(c);
    }
}

// QuantCcm::new's q(): v >= 0 or NaN (fmax maps NaN to 0 first).
__device__ __forceinline__ uint32_t q16(double v, double scale) {
    if (!(scale > 0.0)) return 0u;
    const double q = fmin(fmax(round(v / scale), 0.0), 65535.0);
    return (uint32_t)q;
}

// Grid: x over the R*C plane of one pick, y over the picks (grid-stride).
__device__ void ccm_quantise(const float* __restrict__ cwm, const float* __restrict__ img,
                             const uint32_t* __restrict__ picks, uint32_t* __restrict__ out,
                             uint64_t k_count, uint64_t n, uint64_t d, uint64_t hw) {
    for (uint64_t k = blockIdx.y; k < k_count; k += gridDim.y) {
        const uint64_t b = picks[2 * k], j = picks[2 * k + 1];
        const float* m = cwm + (b * n + j) * hw;
        const float* im = img + b * d * hw;
        uint32_t* row = out + k * (2 + d * hw);
        const double sp = (double)__uint_as_float(row[0]) / 65535.0;
        const double sn = (double)__uint_as_float(row[1]) / 65535.0;
        uint32_t* vals = row + 2;
        for (uint64_t p = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; p < hw;
             p += (uint64_t)gridDim.x * blockDim.x) {
            const float w = m[p];
            for (uint64_t ch = 0; ch < d; ++ch) {
                const float v = im[ch * hw + p] * w;
                const uint32_t pos = q16(fmax((double)v, 0.0), sp);
                const uint32_t neg = q16(fmax((double)(-v), 0.0), sn);
                vals[ch * hw + p] = pos | (neg << 16);
            }
        }
    }
}

// Check (a) for a frame whose evidence is not kept: the sums of each part's
// quantised values, so that the host computes exactly the score the stored
// files would give (QuantCcm::score) from six words a pick.
// Grid: one block per pick. Output per pick, u32: [max_pos bits, max_neg bits,
// sum_pos low, sum_pos high, sum_neg low, sum_neg high]. The sums are of
// integers, so their order does not matter: the result is exact.
__device__ void ccm_qsum(const float* __restrict__ cwm, const float* __restrict__ img,
                         const uint32_t* __restrict__ picks, uint32_t* __restrict__ out,
                         uint64_t n, uint64_t d, uint64_t hw) {
    __shared__ float sp[EV_THREADS / 32], sn[EV_THREADS / 32];
    __shared__ unsigned long long qp[EV_THREADS / 32], qn[EV_THREADS / 32];
    const uint64_t k = blockIdx.x;
    const uint64_t b = picks[2 * k], j = picks[2 * k + 1];
    const float* m = cwm + (b * n + j) * hw;
    const float* im = img + b * d * hw;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    float mp = 0.0f, mn = 0.0f;
    for (uint64_t ch = 0; ch < d; ++ch) {
        for (uint64_t p = threadIdx.x; p < hw; p += EV_THREADS) {
            const float v = im[ch * hw + p] * m[p];
            mp = fmaxf(mp, v);
            mn = fmaxf(mn, -v);
        }
    }
    mp = warp_max(mp);
    mn = warp_max(mn);
    if (lane == 0) {
        sp[warp] = mp;
        sn[warp] = mn;
    }
    __syncthreads();
    float a = 0.0f, c = 0.0f;
    for (int w = 0; w < EV_THREADS / 32; ++w) {
        a = fmaxf(a, sp[w]);
        c = fmaxf(c, sn[w]);
    }
    const double scale_p = (double)a / 65535.0, scale_n = (double)c / 65535.0;
    unsigned long long tp = 0, tn = 0;
    for (uint64_t ch = 0; ch < d; ++ch) {
        for (uint64_t p = threadIdx.x; p < hw; p += EV_THREADS) {
            const float v = im[ch * hw + p] * m[p];
            tp += q16(fmax((double)v, 0.0), scale_p);
            tn += q16(fmax((double)(-v), 0.0), scale_n);
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        tp += __shfl_xor_sync(0xffffffffu, tp, o);
        tn += __shfl_xor_sync(0xffffffffu, tn, o);
    }
    if (lane == 0) {
        qp[warp] = tp;
        qn[warp] = tn;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long p = 0, q = 0;
        for (int w = 0; w < EV_THREADS / 32; ++w) {
            p += qp[w];
            q += qn[w];
        }
        uint32_t* row = out + k * 6;
        row[0] = __float_as_uint(a);
        row[1] = __float_as_uint(c);
        row[2] = (uint32_t)p;
        row[3] = (uint32_t)(p >> 32);
        row[4] = (uint32_t)q;
        row[5] = (uint32_t)(q >> 32);
    }
}

}  // namespace gcm

extern "C" __global__ void __launch_bounds__(EV_THREADS)
    gcm_ccm_max(const float* cwm, const float* img, const uint32_t* picks, uint32_t* out,
                uint64_t n, uint64_t d, uint64_t hw) {
    gcm::ccm_max(cwm, img, picks, out, n, d, hw);
}

extern "C" __global__ void gcm_ccm_quantise(const float* cwm, const float* img,
                                            const uint32_t* picks, uint32_t* out,
                                            uint64_t k_count, uint64_t n, uint64_t d,
                                            uint64_t hw) {
    gcm::ccm_quantise(cwm, img, picks, out, k_count, n, d, hw);
}

extern "C" __global__ void __launch_bounds__(EV_THREADS)
    gcm_ccm_qsum(const float* cwm, const float* img, const uint32_t* picks, uint32_t* out,
                 uint64_t n, uint64_t d, uint64_t hw) {
    gcm::ccm_qsum(cwm, img, picks, out, n, d, hw);
}
