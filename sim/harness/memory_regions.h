// Memories beside each port's own channel: host memory over PCIe and the board's DDR4
// channels, as address regions of the one shared address space (hbmforge.memory_map).
//
// A burst whose address falls in a region takes that region's latency instead of the
// port's, and its beats share the region's bandwidth with every other port that reaches
// the region (one PCIe link, one DDR channel), per direction: a beat may start only when
// the region has carried the previous one (data bytes / bytes_per_cycle cycles). Bursts
// outside every region keep the port's own channel model (HBM) untouched.
//
// A region may be traced: every AR and AW handshake into it is recorded (cycle, port,
// direction, address, bytes), which is exactly what an observer of that memory sees of the
// kernel. The trace is bounded; records beyond its capacity are counted, not kept.
#pragma once
#include <cstdint>
#include <vector>

namespace hbf {

struct Region {
    uint64_t base = 0, size = 0;            // size 0: the slot is unused
    uint32_t read_latency = 1, write_latency = 1;
    double beat_cycles_per_byte = 0.0;      // 1 / bytes_per_cycle (0: no bandwidth limit)
    bool traced = false;
    double read_next = -1e18, write_next = -1e18;   // earliest start of the next beat
    uint64_t bytes_read = 0, bytes_written = 0, read_bursts = 0, write_bursts = 0;
};

struct TraceRecord {
    uint64_t cycle, addr;
    uint32_t bytes;
    uint8_t port, write, region;
};

class MemoryRegions {
  public:
    static constexpr int kMaxRegions = 8;
    static constexpr uint64_t kTraceCapacity = uint64_t(1) << 22;

    bool set(int index, uint64_t base, uint64_t size, uint32_t read_latency, uint32_t write_latency,
             double bytes_per_cycle, bool traced) {
        if (index < 0 || index >= kMaxRegions) return false;
        Region r;
        r.base = base;
        r.size = size;
        r.read_latency = read_latency < 1 ? 1 : read_latency;
        r.write_latency = write_latency < 1 ? 1 : write_latency;
        r.beat_cycles_per_byte = bytes_per_cycle > 0 ? 1.0 / bytes_per_cycle : 0.0;
        r.traced = traced;
        regions_[index] = r;
        active_ = 0;
        for (int i = 0; i < kMaxRegions; ++i)
            if (regions_[i].size) active_ = i + 1;
        return true;
    }

    // The region holding addr, or -1 (the port's own memory).
    int find(uint64_t addr) const {
        for (int i = 0; i < active_; ++i) {
            const Region& r = regions_[i];
            if (r.size && addr >= r.base && addr - r.base < r.size) return i;
        }
        return -1;
    }

    Region& at(int i) { return regions_[i]; }
    const Region* get(int i) const { return i >= 0 && i < kMaxRegions ? &regions_[i] : nullptr; }

    // A beat of `bytes` may start no earlier than this.
    double read_due(int i) const { return regions_[i].read_next; }
    double write_due(int i) const { return regions_[i].write_next; }
    void read_beat(int i, double start, uint32_t bytes) {
        Region& r = regions_[i];
        r.read_next = start + bytes * r.beat_cycles_per_byte;
        r.bytes_read += bytes;
    }
    void write_beat(int i, double start, uint32_t bytes) {
        Region& r = regions_[i];
        r.write_next = start + bytes * r.beat_cycles_per_byte;
        r.bytes_written += bytes;
    }

    void burst(int i, uint64_t cycle, int port, bool write, uint64_t addr, uint32_t bytes) {
        Region& r = regions_[i];
        (write ? r.write_bursts : r.read_bursts)++;
        if (!r.traced) return;
        if (trace_.size() >= kTraceCapacity) {
            ++trace_dropped_;
            return;
        }
        trace_.push_back({cycle, addr, bytes, uint8_t(port), uint8_t(write ? 1 : 0), uint8_t(i)});
    }

    // Move up to max records (oldest first) into out (3 words each); returns how many.
    uint64_t take_trace(uint64_t* out, uint64_t max) {
        uint64_t n = trace_.size() < max ? trace_.size() : max;
        for (uint64_t k = 0; k < n; ++k) {
            const TraceRecord& t = trace_[k];
            out[3 * k] = t.cycle;
            out[3 * k + 1] = t.addr;
            out[3 * k + 2] = uint64_t(t.bytes) | (uint64_t(t.port) << 32) | (uint64_t(t.write) << 40) |
                             (uint64_t(t.region) << 48);
        }
        trace_.erase(trace_.begin(), trace_.begin() + n);
        return n;
    }
    uint64_t trace_pending() const { return trace_.size(); }
    uint64_t trace_dropped() const { return trace_dropped_; }

  private:
    Region regions_[kMaxRegions];
    int active_ = 0;
    std::vector<TraceRecord> trace_;
    uint64_t trace_dropped_ = 0;
};

}  // namespace hbf
