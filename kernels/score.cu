// The fused GCM scoring op and its backward pass.
//
//   score[b, j] = 1/(R*C*D) * sum_{r,c} CWM[b, j, r, c] * S[b, r, c],
//   S[b, r, c]  = sum_d I[b, d, r, c].
//
// Memory-bound: the kernels read every class map once and the image once (the
// image's later reads, one per group of classes, hit L2), and never write the
// tiled weights or the CCM. The reduction is deterministic: per-block partial
// sums in a fixed order, then a second small kernel that adds the partials of
// each score in a fixed order. The Rust side (src/model/score.rs) is the
// reference these kernels are tested against.
//
// Layout: each map (a [R, C] plane) must be contiguous; the batch, class and
// channel strides are free (so a batch narrowed out of a larger tensor, or a
// class range of a larger CWM, needs no copy). All strides are in elements.

#include "common.cuh"

#define SCORE_THREADS 256
#define SCORE_WARPS (SCORE_THREADS / 32)
// Plane elements per thread per block: a block covers SCORE_THREADS * SCORE_K
// consecutive elements of every plane of one batch item.
#define SCORE_K 4
// Classes reduced together: SCORE_CLASSES * SCORE_K independent loads per
// thread are in flight before the first one is used.
#define SCORE_CLASSES 8

namespace gcm {

// Grid: n_chunks * B blocks of SCORE_THREADS. Block (b, chunk) writes
// partial[(b * N + j) * n_chunks + chunk] for every class j.
template <typename T>
__device__ void score_partial(const T* __restrict__ cwm, const T* __restrict__ img,
                              typename Acc<T>::type* __restrict__ partial, uint64_t n,
                              uint64_t d, uint64_t hw, uint64_t cwm_sb, uint64_t cwm_sn,
                              uint64_t img_sb, uint64_t img_sd, uint64_t n_chunks) {
    typedef typename Acc<T>::type A;
    __shared__ A red[SCORE_CLASSES][SCORE_WARPS];
    const uint64_t b = blockIdx.x / n_chunks;
    const uint64_t chunk = blockIdx.x - b * n_chunks;
    const uint64_t base = chunk * (SCORE_THREADS * SCORE_K) + threadIdx.x;
    const unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;

    // The channel sum of this thread's elements, once for all classes.
    A s[SCORE_K];
    const T* im = img + b * img_sb;
#pragma unroll
    for (int k = 0; k < SCORE_K; ++k) {
        const uint64_t idx = base + (uint64_t)k * SCORE_THREADS;
        A acc = 0;
        if (idx < hw) {
            for (uint64_t ch = 0; ch < d; ++ch) acc += load(im + ch * img_sd + idx);
        }
        s[k] = acc;
    }

    const T* mb = cwm + b * cwm_sb;
    for (uint64_t j0 = 0; j0 < n; j0 += SCORE_CLASSES) {
        A acc[SCORE_CLASSES];
#pragma unroll
        for (int c = 0; c < SCORE_CLASSES; ++c) {
            acc[c] = 0;
            if (j0 + c < n) {
                const T* m = mb + (j0 + c) * cwm_sn;
#pragma unroll
                for (int k = 0; k < SCORE_K; ++k) {
                    const uint64_t idx = base + (uint64_t)k * SCORE_THREADS;
                    if (idx < hw) acc[c] += load(m + idx) * s[k];
                }
            }
        }
#pragma unroll
        for (int c = 0; c < SCORE_CLASSES; ++c) {
            const A v = warp_sum(acc[c]);
            if (lane == 0) red[c][warp] = v;
        }
        __syncthreads();
        if (threadIdx.x < SCORE_CLASSES && j0 + threadIdx.x < n) {
            A t = 0;
#pragma unroll
            for (int w = 0; w < SCORE_WARPS; ++w) t += red[threadIdx.x][w];
            partial[(b * n + j0 + threadIdx.x) * n_chunks + chunk] = t;
        }
        __syncthreads();
    }
}

// Grid: ceil(B*N / 8) blocks of 256 threads, one warp per score.
template <typename T>
__device__ void score_finish(const typename Acc<T>::type* __restrict__ partial,
                             T* __restrict__ out, uint64_t scores, uint64_t n_chunks,
                             typename Acc<T>::type inv) {
    typedef typename Acc<T>::type A;
    const uint64_t i = (uint64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const unsigned lane = threadIdx.x & 31u;
    if (i >= scores) return;
    A t = 0;
    for (uint64_t c = lane; c < n_chunks; c += 32) t += partial[i * n_chunks + c];
    t = warp_sum(t);
    if (lane == 0) store(out + i, t * inv);
}

// d score[b, j] / d CWM[b, j, p] = S[b, p] / (R*C*D), times the incoming
// gradient g[b, j]. Contiguous inputs; out is [B, N, R, C].
// Grid: (x over the plane, y over the B*N planes, grid-stride).
template <typename T>
__device__ void grad_cwm(const T* __restrict__ img, const T* __restrict__ g,
                         T* __restrict__ out, uint64_t b_count, uint64_t n, uint64_t d,
                         uint64_t hw, typename Acc<T>::type inv) {
    typedef typename Acc<T>::type A;
    for (uint64_t plane = blockIdx.y; plane < b_count * n; plane += gridDim.y) {
        const uint64_t b = plane / n;
        const A gj = load(g + plane) * inv;
        const T* im = img + b * d * hw;
        for (uint64_t p = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; p < hw;
             p += (uint64_t)gridDim.x * blockDim.x) {
            A s = 0;
            for (uint64_t ch = 0; ch < d; ++ch) s += load(im + ch * hw + p);
            store(out + plane * hw + p, gj * s);
        }
    }
}

// d score[b, j] / d I[b, ch, p] = CWM[b, j, p] / (R*C*D) for every channel,
// summed over the classes with the incoming gradient g[b, j].
// Contiguous inputs; out is [B, D, R, C]. Grid: (x over the plane, y over B).
template <typename T>
__device__ void grad_img(const T* __restrict__ cwm, const T* __restrict__ g,
                         T* __restrict__ out, uint64_t b_count, uint64_t n, uint64_t d,
                         uint64_t hw, typename Acc<T>::type inv) {
    typedef typename Acc<T>::type A;
    for (uint64_t b = blockIdx.y; b < b_count; b += gridDim.y) {
        const T* mb = cwm + b * n * hw;
        const T* gb = g + b * n;
        for (uint64_t p = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; p < hw;
             p += (uint64_t)gridDim.x * blockDim.x) {
            A t = 0;
            for (uint64_t j = 0; j < n; ++j) t += load(gb + j) * load(mb + j * hw + p);
            t *= inv;
            for (uint64_t ch = 0; ch < d; ++ch) store(out + (b * d + ch) * hw + p, t);
        }
    }
}

}  // namespace gcm

#define SCORE_OPS(NAME, T)                                                                    \
    extern "C" __global__ void __launch_bounds__(SCORE_THREADS)                               \
        gcm_score_partial_##NAME(const T* cwm, const T* img, gcm::Acc<T>::type* partial,      \
                                 uint64_t n, uint64_t d, uint64_t hw, uint64_t cwm_sb,        \
                                 uint64_t cwm_sn, uint64_t img_sb, uint64_t img_sd,           \
                                 uint64_t n_chunks) {                                         \
        gcm::score_partial<T>(cwm, img, partial, n, d, hw, cwm_sb, cwm_sn, img_sb, img_sd,    \
                              n_chunks);                                                      \
    }                                                                                         \
    extern "C" __global__ void gcm_score_finish_##NAME(const gcm::Acc<T>::type* partial,      \
                                                       T* out, uint64_t scores,               \
                                                       uint64_t n_chunks,                     \
                                                       gcm::Acc<T>::type inv) {               \
        gcm::score_finish<T>(partial, out, scores, n_chunks, inv);                            \
    }                                                                                         \
    extern "C" __global__ void gcm_score_grad_cwm_##NAME(const T* img, const T* g, T* out,    \
                                                         uint64_t b, uint64_t n, uint64_t d,  \
                                                         uint64_t hw,                         \
                                                         gcm::Acc<T>::type inv) {             \
        gcm::grad_cwm<T>(img, g, out, b, n, d, hw, inv);                                      \
    }                                                                                         \
    extern "C" __global__ void gcm_score_grad_img_##NAME(const T* cwm, const T* g, T* out,    \
                                                         uint64_t b, uint64_t n, uint64_t d,  \
                                                         uint64_t hw,                         \
                                                         gcm::Acc<T>::type inv) {             \
        gcm::grad_img<T>(cwm, g, out, b, n, d, hw, inv);                                      \
    }

SCORE_OPS(f32, float)
SCORE_OPS(f64, double)
SCORE_OPS(f16, __half)
SCORE_OPS(bf16, __nv_bfloat16)
