// CCM evidence for the frames whose evidence is written.
//
// For each pick k = (b, j): CCM = CWM[b, j] (tiled over channels) x I[b], split
// into its positive part max(CCM, 0) and its negative part max(-CCM, 0), each
// quantised to 0..levels against its own maximum:
//
//   q = rint(v * (levels / max))   (round half to even, as Rust's round_ties_even)
//
// Two kernels: `ccm_max` finds the two maxima per pick, `ccm_quantise` writes
// the quantised parts. Only these (bytes, not floats, and only for the picked
// classes) go back to the host. Inputs are contiguous f32: CWM [B, N, R, C],
// scaled image [B, D, R, C]; picks are (b, j) pairs as u32.

#include "common.cuh"

#define EV_THREADS 256

namespace gcm {

// Grid: one block per pick. maxima[2k] = max positive, maxima[2k+1] = max of
// the negative part's magnitude (0 when a part is empty).
__device__ void ccm_max(const float* __restrict__ cwm, const float* __restrict__ img,
                        const uint32_t* __restrict__ picks, float* __restrict__ maxima,
                        uint64_t n, uint64_t d, uint64_t hw) {
    __shared__ float sp[EV_THREADS / 32], sn[EV_THREADS / 32];
    const uint64_t k = blockIdx.x;
    const uint64_t b = picks[2 * k], j = picks[2 * k + 1];
    const float* m = cwm + (b * n + j) * hw;
    const float* im = img + b * d * hw;
    float mp = 0.0f, mn = 0.0f;
    for (uint64_t ch = 0; ch < d; ++ch) {
        for (uint64_t p = threadIdx.x; p < hw; p += EV_THREADS) {
            const float v = m[p] * im[ch * hw + p];
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
        maxima[2 * k] = a;
        maxima[2 * k + 1] = c;
    }
}

__device__ __forceinline__ float level_of(float v, float mul, float levels) {
    // v >= 0 here; v * mul <= levels up to rounding, clamp anyway.
    return fminf(rintf(v * mul), levels);
}

// out: [K, 2, D, R, C] (part 0 positive, part 1 negative). Grid: x over the
// R*C plane of one pick, y over the picks (grid-stride).
template <typename Q>
__device__ void ccm_quantise(const float* __restrict__ cwm, const float* __restrict__ img,
                             const uint32_t* __restrict__ picks,
                             const float* __restrict__ maxima, Q* __restrict__ out,
                             uint64_t k_count, uint64_t n, uint64_t d, uint64_t hw,
                             float levels) {
    const uint64_t per = d * hw;
    for (uint64_t k = blockIdx.y; k < k_count; k += gridDim.y) {
        const uint64_t b = picks[2 * k], j = picks[2 * k + 1];
        const float* m = cwm + (b * n + j) * hw;
        const float* im = img + b * d * hw;
        const float maxp = maxima[2 * k], maxn = maxima[2 * k + 1];
        const float mulp = maxp > 0.0f ? levels / maxp : 0.0f;
        const float muln = maxn > 0.0f ? levels / maxn : 0.0f;
        Q* pos = out + 2 * k * per;
        Q* neg = pos + per;
        for (uint64_t p = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; p < hw;
             p += (uint64_t)gridDim.x * blockDim.x) {
            const float w = m[p];
            for (uint64_t ch = 0; ch < d; ++ch) {
                const float v = w * im[ch * hw + p];
                pos[ch * hw + p] = (Q)(v > 0.0f ? level_of(v, mulp, levels) : 0.0f);
                neg[ch * hw + p] = (Q)(v < 0.0f ? level_of(-v, muln, levels) : 0.0f);
            }
        }
    }
}

}  // namespace gcm

extern "C" __global__ void __launch_bounds__(EV_THREADS)
    gcm_ccm_max(const float* cwm, const float* img, const uint32_t* picks, float* maxima,
                uint64_t n, uint64_t d, uint64_t hw) {
    gcm::ccm_max(cwm, img, picks, maxima, n, d, hw);
}

extern "C" __global__ void gcm_ccm_quantise_u8(const float* cwm, const float* img,
                                               const uint32_t* picks, const float* maxima,
                                               uint8_t* out, uint64_t k_count, uint64_t n,
                                               uint64_t d, uint64_t hw, float levels) {
    gcm::ccm_quantise<uint8_t>(cwm, img, picks, maxima, out, k_count, n, d, hw, levels);
}

extern "C" __global__ void gcm_ccm_quantise_u32(const float* cwm, const float* img,
                                                const uint32_t* picks, const float* maxima,
                                                uint32_t* out, uint64_t k_count, uint64_t n,
                                                uint64_t d, uint64_t hw, float levels) {
    gcm::ccm_quantise<uint32_t>(cwm, img, picks, maxima, out, k_count, n, d, hw, levels);
}
