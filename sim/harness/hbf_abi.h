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

#ifdef __cplusplus
}
#endif
