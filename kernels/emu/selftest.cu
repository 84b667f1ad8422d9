// Kernels that check the emulation itself (src/lib.rs's tests), written as
// CUDA C++ like kernels/*.cu.
#include <stdint.h>

// out[t] = the value of lane (t ^ 5), then the warp's sum of the lane ids.
extern "C" __global__ void emu_lanes(unsigned* out) {
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    out[2 * t] = __shfl_xor_sync(0xffffffffu, threadIdx.x & 31u, 5);
    unsigned s = threadIdx.x & 31u;
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    out[2 * t + 1] = s;
}

// Threads from `live` on return at once; the others exchange their block
// index through shared memory across a barrier.
extern "C" __global__ void emu_barrier(unsigned* out, unsigned live) {
    __shared__ unsigned slot[1024];
    if (threadIdx.x >= live) return;
    slot[threadIdx.x] = 1000u * blockIdx.x + threadIdx.x;
    __syncthreads();
    out[blockIdx.x * live + threadIdx.x] = slot[(threadIdx.x + 1) % live];
}

// Lane 3 returns before a full-warp shuffle: undefined on a GPU, an error here.
extern "C" __global__ void emu_bad_mask(unsigned* out) {
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, threadIdx.x, 1);
}
