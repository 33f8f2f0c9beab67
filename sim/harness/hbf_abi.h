// C ABI of an hbmforge co-simulation library (docs/architecture.md §7).
// Everything else in the library is hidden (-fvisibility=hidden), so two
// designs can be loaded into one process side by side.
#pragma once
#include <stdint.h>

#if defined(__GNUC__)
#define HBF_API __attribute__((visibility("default")))
#else
#define HBF_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

HBF_API void*    hbf_create(void);
HBF_API void     hbf_destroy(void* h);
HBF_API int      hbf_num_ports(void* h);
HBF_API void     hbf_set_port_timing(void* h, int port, uint32_t read_latency, uint32_t write_latency,
                                     double bytes_per_cycle, uint32_t max_outstanding);
HBF_API uint32_t hbf_reg_read(void* h, uint32_t addr);
HBF_API void     hbf_reg_write(void* h, uint32_t addr, uint32_t data);
HBF_API void     hbf_mem_write(void* h, uint64_t addr, const void* src, uint64_t n);
HBF_API void     hbf_mem_read(void* h, uint64_t addr, void* dst, uint64_t n);
HBF_API void     hbf_step(void* h, uint64_t cycles);
HBF_API int      hbf_run_until_interrupt(void* h, uint64_t max_cycles);
HBF_API uint64_t hbf_cycles(void* h);
HBF_API void     hbf_port_stats(void* h, int port, uint64_t out[6]);
HBF_API int      hbf_protocol_errors(void* h, char* buf, int buflen);
HBF_API void     hbf_trace_open(void* h, const char* path);
// Memory regions beside the ports' own channels (host memory, DDR; memory_regions.h):
// region `index` (< 8) covers [base, base + size) with its own latency and a bandwidth shared
// by every port (size 0 removes it); `traced`: record every burst into it. 1 if accepted.
HBF_API int      hbf_set_region(void* h, int index, uint64_t base, uint64_t size, uint32_t read_latency,
                                uint32_t write_latency, double bytes_per_cycle, int traced);
// bytes_read, bytes_written, read_bursts, write_bursts, trace records pending, trace records dropped
HBF_API void     hbf_region_stats(void* h, int index, uint64_t out[6]);
// Move up to max_records traced bursts (oldest first) into out, 3 words each: cycle of the
// AR/AW handshake, address, bytes | port << 32 | is_write << 40 | region << 48. Returns the count.
HBF_API uint64_t hbf_region_trace(void* h, uint64_t* out, uint64_t max_records);

// The main memory's timing (docs/hbm-model.md): n = 0 selects the `ideal` model (each port its
// own latency and bandwidth, the default); n = 21 doubles (dram_model.h DramParams, in kernel
// cycles) select the `calibrated` model (DRAM channels shared by every port: banks and rows,
// refresh, turnaround, the HBM switch). 1 if accepted.
HBF_API int      hbf_set_memory_model(void* h, const double* params, int n);
// The DRAM channel a port is bound to (its HBM switch group); default 0.
HBF_API void     hbf_set_port_channel(void* h, int port, uint32_t channel);
// accesses, row hits, row closed, row misses, refreshes, turnarounds, crossing bursts, hops crossed
HBF_API void     hbf_memory_stats(void* h, uint64_t out[8]);

// AXI4-Stream ports the engines declare (manifest "streams", in order; hbf_stream.h): an out
// stream's beats leave at `bytes_per_cycle` through a buffer of `buffer_beats` (tready low when
// full); take moves the beats that left (data: width/8 bytes each, stamps: the cycle each left,
// lasts: tlast) and returns the count; give queues beats into an in stream, each seen by the
// design from its stamp (cycle) on; stats: beats through, beats waiting.
HBF_API int      hbf_num_streams(void* h);
HBF_API void     hbf_stream_config(void* h, int stream, double bytes_per_cycle, uint32_t buffer_beats);
HBF_API uint64_t hbf_stream_take(void* h, int stream, uint8_t* data, uint64_t* stamps, uint8_t* lasts, uint64_t max);
HBF_API uint64_t hbf_stream_give(void* h, int stream, const uint8_t* data, const uint64_t* stamps,
                                 const uint8_t* lasts, uint64_t n);
HBF_API void     hbf_stream_stats(void* h, int stream, uint64_t out[2]);
HBF_API int      hbf_interrupt(void* h);   // the interrupt pin now
// Write the code coverage counted so far (Verilator's coverage.dat format) to `path`; 1 if
// written, 0 if the library was built without coverage (BuildOptions(coverage=True)).
HBF_API int      hbf_coverage_write(void* h, const char* path);

#ifdef __cplusplus
}
#endif
