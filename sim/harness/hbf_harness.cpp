// Co-simulation harness: the Verilated kernel, one timing model per m_axi
// port over one shared sparse memory, and an AXI-Lite driver, behind the C
// ABI of hbf_abi.h. The per-cycle loop runs entirely in C++.
//
// One cycle:  present model outputs -> clk=0, eval   (combinational settle)
//             sample kernel outputs -> update models -> clk=1, eval (rising edge)
// Model outputs are Moore (state only), so two evaluations per cycle suffice.
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "hbf_abi.h"
#include "hbf_ports.h"  // generated from the manifest: port table and signal bindings

#if HBF_TRACE && HBF_TRACE_FST
#include "verilated_fst_c.h"
using TraceFile = VerilatedFstC;
#elif HBF_TRACE
#include "verilated_vcd_c.h"
using TraceFile = VerilatedVcdC;
#endif
#if VM_COVERAGE
#include "verilated_cov.h"
#endif

namespace hbf {

class Harness {
  public:
    static constexpr uint64_t kResetCycles = 16;
    static constexpr uint64_t kRegTimeoutCycles = 100000;

    Harness() : ctx_(new VerilatedContext), top_(nullptr) {
        ctx_->fatalOnError(false);  // $stop/$fatal/assertions end the run, not the host process
#if HBF_TRACE
        ctx_->traceEverOn(true);
#endif
        top_.reset(new Vtop{ctx_.get(), "TOP"});
        for (int p = 0; p < design::kNumPorts; ++p) {
            const design::PortDesc& d = design::kPorts[p];
            owned_[p].reset(new AxiPortModel(d.prefix, d.data_bytes, d.max_burst_beats,
                                             design::data_pins(top_.get(), p), mem_, log_));
            ports_[p] = owned_[p].get();
            ports_[p]->set_timing(d.timing);
            ports_[p]->attach(&regions_, p, &dram_);
        }
        irq_ = design::interrupt_pin(top_.get());
        design::init_streams(streams_);
        top_->ap_rst_n = 0;
        step(kResetCycles);
        top_->ap_rst_n = 1;
    }

    ~Harness() {
#if HBF_TRACE
        if (trace_) trace_->close();
#endif
        top_->final();
    }

    AxiPortModel* port(int p) { return p >= 0 && p < design::kNumPorts ? ports_[p] : nullptr; }
    SparseMemory& memory() { return mem_; }
    MemoryRegions& regions() { return regions_; }
    DramModel& dram() { return dram_; }
    ProtocolLog& log() { return log_; }
    StreamSet& streams() { return streams_; }
    bool interrupt() const { return *irq_ != 0; }
    uint64_t cycles() const { return now_; }

    void step(uint64_t n) {
        for (uint64_t i = 0; i < n && !finished(); ++i) cycle();
    }

    bool run_until_interrupt(uint64_t max_cycles) {
        for (uint64_t i = 0; i < max_cycles; ++i) {
            if (*irq_) return true;
            if (finished()) return false;
            cycle();
        }
        return *irq_ != 0;
    }

    // The RTL ran $finish, $stop, $fatal or failed an assertion: the model cannot go on.
    bool finished() {
        if (!ctx_->gotFinish()) return false;
        if (!finish_reported_) {
            finish_reported_ = true;
            log_.report("kernel: the model stopped at cycle %llu (%s); the simulation cannot continue",
                        (unsigned long long)now_, ctx_->gotError() ? "$stop, $fatal or a failed assertion" : "$finish");
        }
        return true;
    }

    uint32_t reg_read(uint32_t addr) {
        lite_.start_read(addr);
        if (!finish_lite("read", addr)) return 0xFFFFFFFFu;
        return lite_.read_data();
    }

    void reg_write(uint32_t addr, uint32_t data) {
        lite_.start_write(addr, data);
        finish_lite("write", addr);
    }

    void trace_open(const char* path) {
#if HBF_TRACE
        if (trace_) trace_->close();
        trace_.reset(new TraceFile);
        top_->trace(trace_.get(), 99);
        trace_->open(path);
#else
        log_.report("trace_open(%s): this library was built without trace support", path ? path : "");
#endif
    }

    bool coverage_write(const char* path) {
#if VM_COVERAGE
        ctx_->coveragep()->write(path);
        return true;
#else
        (void)path;
        return false;
#endif
    }

  private:
    inline void cycle() {
        for (int p = 0; p < design::kNumPorts; ++p) ports_[p]->present(now_);
        design::drive_ports(top_.get(), ports_);
        design::drive_control(top_.get(), lite_.out());
        design::drive_streams(top_.get(), streams_, now_);
        top_->ap_clk = 0;
        top_->eval();
        dump(2 * now_);

        design::sample_streams(top_.get(), streams_, now_);
        design::sample_ports(top_.get(), in_);
        design::sample_control(top_.get(), lite_in_);
        for (int p = 0; p < design::kNumPorts; ++p) ports_[p]->update(in_[p], now_);
        if (lite_.busy()) lite_.update(lite_in_);
        top_->ap_clk = 1;
        top_->eval();
        dump(2 * now_ + 1);
        ++now_;
    }

    inline void dump(uint64_t t) {
#if HBF_TRACE
        if (trace_) trace_->dump(t);
#else
        (void)t;
#endif
    }

    bool finish_lite(const char* what, uint32_t addr) {
        for (uint64_t i = 0; i < kRegTimeoutCycles && lite_.busy(); ++i) {
            if (finished()) break;
            cycle();
        }
        if (lite_.busy()) {
            lite_.abort();
            design::drive_control(top_.get(), lite_.out());
            log_.report("s_axi_control: %s at 0x%03x got no response within %llu cycles", what, addr,
                        (unsigned long long)kRegTimeoutCycles);
            return false;
        }
        if (lite_.response() != 0)
            log_.report("s_axi_control: %s at 0x%03x answered with response %u (not OKAY)", what, addr,
                        lite_.response());
        return true;
    }

    std::unique_ptr<VerilatedContext> ctx_;
    std::unique_ptr<Vtop> top_;
    const CData* irq_ = nullptr;
    SparseMemory mem_;
    MemoryRegions regions_;  // host memory, DDR: address regions with their own timing (memory_regions.h)
    DramModel dram_;         // the calibrated model of the main memory, off unless set (dram_model.h)
    StreamSet streams_;      // the engines' AXI4-Stream ports (hbf_stream.h)
    ProtocolLog log_;
    std::unique_ptr<AxiPortModel> owned_[design::kNumPorts];
    AxiPortModel* ports_[design::kNumPorts];
    MasterSignals in_[design::kNumPorts];
    AxiLiteMaster lite_;
    LiteSlaveIn lite_in_;
    uint64_t now_ = 0;
    bool finish_reported_ = false;
#if HBF_TRACE
    std::unique_ptr<TraceFile> trace_;
#endif
};

}  // namespace hbf

using hbf::Harness;

static Harness* H(void* h) { return static_cast<Harness*>(h); }

extern "C" {

void* hbf_create(void) {
    try {
        return new Harness;
    } catch (...) {
        return nullptr;
    }
}

void hbf_destroy(void* h) { delete H(h); }

int hbf_num_ports(void*) { return hbf::design::kNumPorts; }

void hbf_set_port_timing(void* h, int port, uint32_t read_latency, uint32_t write_latency,
                         double bytes_per_cycle, uint32_t max_outstanding) {
    if (auto* p = H(h)->port(port)) p->set_timing({read_latency, write_latency, bytes_per_cycle, max_outstanding});
}

uint32_t hbf_reg_read(void* h, uint32_t addr) { return H(h)->reg_read(addr); }

void hbf_reg_write(void* h, uint32_t addr, uint32_t data) { H(h)->reg_write(addr, data); }

void hbf_mem_write(void* h, uint64_t addr, const void* src, uint64_t n) {
    H(h)->memory().write(addr, static_cast<const uint8_t*>(src), n);
}

void hbf_mem_read(void* h, uint64_t addr, void* dst, uint64_t n) {
    H(h)->memory().read(addr, static_cast<uint8_t*>(dst), n);
}

void hbf_step(void* h, uint64_t cycles) { H(h)->step(cycles); }

int hbf_run_until_interrupt(void* h, uint64_t max_cycles) { return H(h)->run_until_interrupt(max_cycles) ? 1 : 0; }

uint64_t hbf_cycles(void* h) { return H(h)->cycles(); }

void hbf_port_stats(void* h, int port, uint64_t out[6]) {
    std::memset(out, 0, 6 * sizeof(uint64_t));
    auto* p = H(h)->port(port);
    if (!p) return;
    const hbf::PortStats& s = p->stats();
    out[0] = s.bytes_read;
    out[1] = s.bytes_written;
    out[2] = s.read_bursts;
    out[3] = s.write_bursts;
    out[4] = s.r_beats;
    out[5] = s.violations_4k;
}

int hbf_protocol_errors(void* h, char* buf, int buflen) {
    const hbf::ProtocolLog& log = H(h)->log();
    if (buf && buflen > 0) {
        std::string text = log.text();
        size_t n = text.size() < size_t(buflen - 1) ? text.size() : size_t(buflen - 1);
        std::memcpy(buf, text.data(), n);
        buf[n] = '\0';
    }
    uint64_t count = log.count();
    return count > 0x7FFFFFFF ? 0x7FFFFFFF : int(count);
}

void hbf_trace_open(void* h, const char* path) { H(h)->trace_open(path); }

int hbf_set_region(void* h, int index, uint64_t base, uint64_t size, uint32_t read_latency,
                   uint32_t write_latency, double bytes_per_cycle, int traced) {
    return H(h)->regions().set(index, base, size, read_latency, write_latency, bytes_per_cycle, traced != 0)
               ? 1 : 0;
}

void hbf_region_stats(void* h, int index, uint64_t out[6]) {
    std::memset(out, 0, 6 * sizeof(uint64_t));
    const hbf::Region* r = H(h)->regions().get(index);
    if (!r) return;
    out[0] = r->bytes_read;
    out[1] = r->bytes_written;
    out[2] = r->read_bursts;
    out[3] = r->write_bursts;
    out[4] = H(h)->regions().trace_pending();
    out[5] = H(h)->regions().trace_dropped();
}

uint64_t hbf_region_trace(void* h, uint64_t* out, uint64_t max_records) {
    return H(h)->regions().take_trace(out, max_records);
}

int hbf_set_memory_model(void* h, const double* params, int n) {
    if (n == 0) {
        H(h)->dram().disable();
        return 1;
    }
    return params && H(h)->dram().configure(params, n) ? 1 : 0;
}

void hbf_set_port_channel(void* h, int port, uint32_t channel) {
    if (auto* p = H(h)->port(port)) p->set_home(channel);
}

void hbf_memory_stats(void* h, uint64_t out[8]) {
    const hbf::DramStats& s = H(h)->dram().stats();
    out[0] = s.accesses;
    out[1] = s.row_hits;
    out[2] = s.row_closed;
    out[3] = s.row_misses;
    out[4] = s.refreshes;
    out[5] = s.turnarounds;
    out[6] = s.crossing_bursts;
    out[7] = s.crossing_hops;
}

int hbf_num_streams(void* h) { return H(h)->streams().size(); }

void hbf_stream_config(void* h, int stream, double bytes_per_cycle, uint32_t buffer_beats) {
    if (auto* o = H(h)->streams().out(stream)) o->configure(bytes_per_cycle, buffer_beats);
}

uint64_t hbf_stream_take(void* h, int stream, uint8_t* data, uint64_t* stamps, uint8_t* lasts, uint64_t max) {
    auto* o = H(h)->streams().out(stream);
    return o ? o->take(data, stamps, lasts, max) : 0;
}

uint64_t hbf_stream_give(void* h, int stream, const uint8_t* data, const uint64_t* stamps, const uint8_t* lasts,
                         uint64_t n) {
    auto* i = H(h)->streams().in(stream);
    if (!i) return 0;
    i->give(data, stamps, lasts, n);
    return n;
}

void hbf_stream_stats(void* h, int stream, uint64_t out[2]) {
    out[0] = out[1] = 0;
    if (auto* i = H(h)->streams().in(stream)) { out[0] = i->beats_out(); out[1] = i->pending(); }
    if (auto* o = H(h)->streams().out(stream)) { out[0] = o->beats_in(); out[1] = o->pending(); }
}

int hbf_interrupt(void* h) { return H(h)->interrupt() ? 1 : 0; }

int hbf_coverage_write(void* h, const char* path) { return H(h)->coverage_write(path) ? 1 : 0; }

}  // extern "C"
