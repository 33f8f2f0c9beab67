// Timing model of one memory channel behind one AXI4 master port of the kernel,
// plus the protocol checks of that port.
//
// Model (per port, reads and writes independent):
//   * an AR/AW is accepted while fewer than `max_outstanding` bursts of that
//     direction are in flight;
//   * beats leave in order (bursts in AR order, whatever their IDs), each
//     taking d = port bytes / `bytes_per_cycle` cycles of the channel (d >= 1:
//     at most one beat per cycle); the first beat of a burst that finds the
//     channel idle appears `read_latency` + d - 1 cycles after its AR
//     handshake, so B bytes arrive after about read_latency + B / bytes_per_cycle;
//   * W beats are accepted once their AW is, one per d cycles; the B response
//     follows `write_latency` cycles after the last beat has been transferred.
//   A stalled channel (the kernel not ready) does not bank bandwidth.
// Memory is read when a beat is presented and written at the W handshake.
//
// Each cycle the harness calls present() after the rising edge (outputs are
// a function of the model state only, so no combinational loop with the
// kernel can form) and update() with the kernel's outputs sampled just before
// the next rising edge.
//
// A burst into one of the address regions of memory_regions.h (host memory, DDR) takes the
// region's latency and shares the region's bandwidth instead of using this channel.
//
// With the calibrated memory model on (dram_model.h, hbf_set_memory_model), a burst into the
// board's main memory takes its latency and beat times from the DRAM channel its address falls
// in (shared by every port, refresh, rows, turnaround, the HBM switch) instead of
// `read_latency`; the port's own `bytes_per_cycle` still caps each beat (the AXI port's rate).
// A write burst takes its bus slots when its AW is accepted; W beats keep the port's pace and
// the B response comes no earlier than the burst's last column access has left the bus.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "dram_model.h"
#include "memory_regions.h"
#include "protocol_log.h"
#include "sparse_memory.h"

namespace hbf {

struct PortTiming {
    uint32_t read_latency;      // cycles from AR handshake to the first R beat
    uint32_t write_latency;     // cycles from the last W beat to the B response
    double bytes_per_cycle;     // channel bandwidth per direction
    uint32_t max_outstanding;   // bursts in flight per direction
};

// What the kernel drives on the port (sampled before a rising edge).
struct MasterSignals {
    bool arvalid = false, rready = false, awvalid = false, wvalid = false, wlast = false, bready = false;
    uint32_t arid = 0, arlen = 0, arsize = 0, arburst = 0;
    uint32_t awid = 0, awlen = 0, awsize = 0, awburst = 0;
    uint64_t araddr = 0, awaddr = 0;
};

// What the memory drives back (rdata is written straight into the model's storage).
struct SlaveSignals {
    bool arready = false, rvalid = false, rlast = false, awready = false, wready = false, bvalid = false;
    uint32_t rid = 0, rresp = 0, bid = 0, bresp = 0;
};

// Byte views of the wide signals inside the Verilated model (little-endian).
struct DataPins {
    uint8_t* rdata = nullptr;
    const uint8_t* wdata = nullptr;
    const uint8_t* wstrb = nullptr;
};

struct PortStats {
    uint64_t bytes_read = 0, bytes_written = 0, read_bursts = 0, write_bursts = 0, r_beats = 0,
             violations_4k = 0;
};

// Fixed-capacity FIFO: no allocation in the cycle loop.
template <typename T, uint32_t N>
class Ring {
    static_assert((N & (N - 1)) == 0, "capacity must be a power of two");

  public:
    bool empty() const { return head_ == tail_; }
    uint32_t size() const { return tail_ - head_; }
    T& front() { return items_[head_ & (N - 1)]; }
    void push(const T& v) { items_[tail_++ & (N - 1)] = v; }
    void pop() { ++head_; }

  private:
    T items_[N];
    uint32_t head_ = 0, tail_ = 0;
};

class AxiPortModel {
  public:
    static constexpr uint32_t kMaxOutstanding = 256;

    AxiPortModel(const char* name, uint32_t data_bytes, uint32_t max_burst_beats, DataPins pins,
                 SparseMemory& mem, ProtocolLog& log)
        : name_(name), data_bytes_(data_bytes), max_burst_beats_(max_burst_beats), pins_(pins),
          mem_(mem), log_(log) {
        size_log2_ = 0;
        while ((1u << size_log2_) < data_bytes_) ++size_log2_;
    }

    void set_timing(const PortTiming& t) {
        timing_ = t;
        if (timing_.max_outstanding < 1) timing_.max_outstanding = 1;
        if (timing_.max_outstanding > kMaxOutstanding) timing_.max_outstanding = kMaxOutstanding;
        double bpc = t.bytes_per_cycle;
        beat_cycles_ = bpc > 0 && bpc < data_bytes_ ? data_bytes_ / bpc : 1.0;   // 0 or NaN: full width
    }
    const PortTiming& timing() const { return timing_; }
    void attach(MemoryRegions* regions, int index, DramModel* dram = nullptr) {
        regions_ = regions;
        index_ = index;
        dram_ = dram;
    }
    // The DRAM channel this port is bound to (its pseudo-channel: the HBM switch group it sits in).
    void set_home(uint32_t channel) { home_ = channel; }
    const PortStats& stats() const { return stats_; }
    const SlaveSignals& out() const { return out_; }

    // After a rising edge: compute this cycle's outputs from the model state.
    void present(uint64_t now) {
        out_.arready = reads_.size() < timing_.max_outstanding;
        if (!out_.rvalid && !reads_.empty()) {
            ReadBurst& b = reads_.front();
            double due = std::max(double(b.ready) + beat_cycles_ - 1.0, r_last_ + beat_cycles_);
            if (b.region >= 0) due = region_read_due(b);
            else if (b.dram) due = std::max(b.first + b.beat * b.step, r_last_ + beat_cycles_);
            if (double(now) >= due) {
                mem_.read(b.addr + uint64_t(b.beat) * data_bytes_, pins_.rdata, data_bytes_);
                out_.rvalid = true;
                out_.rid = b.id;
                out_.rlast = b.beat + 1 == b.beats;
                r_last_ = double(now) - due < 1.0 ? due : double(now);   // keep fractions, drop stalls
                if (b.region >= 0) regions_->read_beat(b.region, r_last_, data_bytes_);
            }
        }
        out_.awready = aw_.size() + b_.size() < timing_.max_outstanding;
        w_due_ = w_last_ + beat_cycles_;
        if (!aw_.empty() && aw_.front().region >= 0)
            w_due_ = std::max(w_last_ + 1.0, regions_->write_due(aw_.front().region));
        out_.wready = !aw_.empty() && double(now) >= w_due_;
        if (!out_.bvalid && !b_.empty() && now >= b_.front().ready) {
            out_.bvalid = true;
            out_.bid = b_.front().id;
        }
    }

    // Before the next rising edge: apply the handshakes the kernel's outputs complete.
    void update(const MasterSignals& in, uint64_t now) {
        check_stable(in, now);
        if (in.arvalid && out_.arready) accept_read(in, now);
        if (out_.rvalid && in.rready) {
            ReadBurst& b = reads_.front();
            stats_.r_beats++;
            stats_.bytes_read += data_bytes_;
            if (++b.beat == b.beats) reads_.pop();
            out_.rvalid = false;
        }
        if (in.awvalid && out_.awready) accept_write(in, now);
        if (in.wvalid && out_.wready) take_write_beat(in, now);
        if (out_.bvalid && in.bready) {
            b_.pop();
            out_.bvalid = false;
        }
        prev_ = in;
        prev_arready_ = out_.arready;
        prev_awready_ = out_.awready;
        prev_wready_ = out_.wready;
    }

  private:
    struct ReadBurst {
        uint64_t addr, ready;
        uint32_t id, beats, beat;
        int region;
        bool dram;              // timed by the calibrated DRAM model: beat k due at first + k * step
        double first, step;
    };
    struct WriteBurst { uint64_t addr; uint32_t id, beats, beat; int region; double dram_done; };
    struct WriteResp { uint64_t ready; uint32_t id; };

    bool dram_on() const { return dram_ && dram_->enabled(); }

    uint64_t word_base(uint64_t addr) const { return addr & ~uint64_t(data_bytes_ - 1); }

    void check_burst(const char* ch, uint64_t addr, uint32_t len, uint32_t size, uint32_t burst,
                     uint64_t now) {
        uint32_t beats = len + 1;
        if (burst != 1)
            log_.report("%s %s: burst type %u is not INCR (addr 0x%llx, cycle %llu)", name_, ch, burst,
                        (unsigned long long)addr, (unsigned long long)now);
        if (size != size_log2_)
            log_.report("%s %s: size %u (%u B) is not the port width (%u B) (addr 0x%llx, cycle %llu)",
                        name_, ch, size, 1u << size, data_bytes_, (unsigned long long)addr,
                        (unsigned long long)now);
        if (addr & (data_bytes_ - 1))
            log_.report("%s %s: address 0x%llx is not aligned to the %u-byte word (cycle %llu)", name_, ch,
                        (unsigned long long)addr, data_bytes_, (unsigned long long)now);
        if (beats > max_burst_beats_)
            log_.report("%s %s: %u beats exceed the limit of %u (addr 0x%llx, cycle %llu)", name_, ch, beats,
                        max_burst_beats_, (unsigned long long)addr, (unsigned long long)now);
        uint64_t last = word_base(addr) + uint64_t(beats) * data_bytes_ - 1;
        if ((addr >> 12) != (last >> 12)) {
            stats_.violations_4k++;
            log_.report("%s %s: burst 0x%llx..0x%llx (%u beats) crosses a 4 KiB boundary (cycle %llu)", name_,
                        ch, (unsigned long long)addr, (unsigned long long)last, beats, (unsigned long long)now);
        }
    }

    void accept_read(const MasterSignals& in, uint64_t now) {
        check_burst("AR", in.araddr, in.arlen, in.arsize, in.arburst, now);
        int region = regions_ ? regions_->find(in.araddr) : -1;
        uint32_t latency = timing_.read_latency;
        if (region >= 0) {
            latency = regions_->at(region).read_latency;
            regions_->burst(region, now, index_, false, word_base(in.araddr), (in.arlen + 1) * data_bytes_);
        }
        ReadBurst b{word_base(in.araddr), now + latency, in.arid, in.arlen + 1, 0, region, false, 0.0, 0.0};
        if (region < 0 && dram_on()) {
            b.dram = true;
            dram_->read_burst(home_, b.addr, b.beats, data_bytes_, double(now), &b.first, &b.step);
        }
        reads_.push(b);
        stats_.read_bursts++;
    }

    void accept_write(const MasterSignals& in, uint64_t now) {
        check_burst("AW", in.awaddr, in.awlen, in.awsize, in.awburst, now);
        int region = regions_ ? regions_->find(in.awaddr) : -1;
        if (region >= 0)
            regions_->burst(region, now, index_, true, word_base(in.awaddr), (in.awlen + 1) * data_bytes_);
        WriteBurst b{word_base(in.awaddr), in.awid, in.awlen + 1, 0, region, -1.0};
        if (region < 0 && dram_on()) b.dram_done = dram_->write_burst(home_, b.addr, b.beats, data_bytes_, double(now));
        aw_.push(b);
        stats_.write_bursts++;
    }

    void take_write_beat(const MasterSignals& in, uint64_t now) {
        WriteBurst& b = aw_.front();
        mem_.write_strobed(b.addr + uint64_t(b.beat) * data_bytes_, pins_.wdata, pins_.wstrb, data_bytes_);
        stats_.bytes_written += data_bytes_;
        w_last_ = double(now) - w_due_ < 1.0 ? w_due_ : double(now);
        if (b.region >= 0) regions_->write_beat(b.region, w_last_, data_bytes_);
        bool last = b.beat + 1 == b.beats;
        if (in.wlast != last)
            log_.report("%s W: WLAST=%d on beat %u of a %u-beat burst at 0x%llx (cycle %llu)", name_,
                        int(in.wlast), b.beat + 1, b.beats, (unsigned long long)b.addr, (unsigned long long)now);
        if (++b.beat == b.beats) {
            // the beat accepted now still occupies the channel for beat_cycles_ - 1 cycles
            if (b.region >= 0)
                b_.push({now + uint64_t(region_beat_cycles(b.region) - 1.0 + 0.5) +
                             regions_->at(b.region).write_latency, b.id});
            else
                b_.push({std::max(now + uint64_t(beat_cycles_ - 1.0 + 0.5) + timing_.write_latency,
                                  uint64_t(std::ceil(std::max(b.dram_done, 0.0)))), b.id});
            aw_.pop();
        }
    }

    // Cycles one beat of this port occupies a region's link (at least one: a beat per cycle).
    double region_beat_cycles(int region) const {
        return std::max(1.0, data_bytes_ * regions_->at(region).beat_cycles_per_byte);
    }

    // The first beat of a region burst appears the region's latency plus one beat time after
    // its AR; later beats one per beat time of the shared link, at most one per cycle here.
    double region_read_due(const ReadBurst& b) const {
        double d = region_beat_cycles(b.region);
        return std::max({double(b.ready) + d - 1.0, r_last_ + 1.0, regions_->read_due(b.region)});
    }

    // A valid, once raised, stays up with the same payload until its handshake.
    void check_stable(const MasterSignals& in, uint64_t now) {
        if (prev_.arvalid && !prev_arready_ &&
            (!in.arvalid || in.araddr != prev_.araddr || in.arlen != prev_.arlen || in.arid != prev_.arid))
            log_.report("%s AR: ARVALID dropped or payload changed before ARREADY (cycle %llu)", name_,
                        (unsigned long long)now);
        if (prev_.awvalid && !prev_awready_ &&
            (!in.awvalid || in.awaddr != prev_.awaddr || in.awlen != prev_.awlen || in.awid != prev_.awid))
            log_.report("%s AW: AWVALID dropped or payload changed before AWREADY (cycle %llu)", name_,
                        (unsigned long long)now);
        if (prev_.wvalid && !prev_wready_ && (!in.wvalid || in.wlast != prev_.wlast))
            log_.report("%s W: WVALID dropped or WLAST changed before WREADY (cycle %llu)", name_,
                        (unsigned long long)now);
    }

    const char* name_;
    uint32_t data_bytes_, max_burst_beats_, size_log2_;
    DataPins pins_;
    SparseMemory& mem_;
    ProtocolLog& log_;
    PortTiming timing_{1, 1, 0.0, 1};
    double beat_cycles_ = 1.0;                  // channel cycles per beat
    double r_last_ = -1e18, w_last_ = -1e18;     // when the last R beat was presented / W beat accepted
    double w_due_ = 0;
    SlaveSignals out_;
    MasterSignals prev_;
    bool prev_arready_ = false, prev_awready_ = false, prev_wready_ = false;
    PortStats stats_;
    MemoryRegions* regions_ = nullptr;
    int index_ = 0;
    DramModel* dram_ = nullptr;
    uint32_t home_ = 0;
    Ring<ReadBurst, kMaxOutstanding> reads_;
    Ring<WriteBurst, kMaxOutstanding> aw_;
    Ring<WriteResp, kMaxOutstanding> b_;
};

}  // namespace hbf
