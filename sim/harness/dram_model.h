// Calibrated timing of the board's main memory (HBM2 pseudo-channels or one DDR4 channel),
// shared by every AXI port: the `calibrated` memory model of docs/hbm-model.md.
//
// The `ideal` model (the default, axi_port_model.h alone) gives each port a fixed latency and
// a bandwidth of its own. The calibrated model adds, per DRAM channel (an HBM pseudo-channel,
// or the one DDR4 channel an edge board's HP ports share):
//   * one data bus for reads and writes, carrying one column access (`burst_bytes`) per
//     `burst_cycles`; a change of direction costs the write-to-read or read-to-write gap;
//   * `banks` banks with one open row each (row = `page_bytes`, address map row | bank |
//     column): a row hit issues at once, a closed bank waits tRCD after its ACTIVATE, a row
//     miss waits tRAS (since the last ACTIVATE) and the row's last access, then tRP and tRCD;
//     ACTIVATEs keep tRRD and tFAW (the controller opens a row as soon as a request for it is
//     queued: bursts in flight let it prepare the next banks while the bus is busy);
//   * all-bank refresh every tREFI for tRFC (no access, every row closed), staggered over the
//     channels;
//   * the idle latency of a row hit (`hit_latency`, measured) from the column access to the
//     first beat at the port;
//   * HBM only: the switch between ports and pseudo-channels. A port reaches the channels of
//     its own group (`group_channels`) directly; an access to another group passes every
//     boundary in between (`hop_latency` each, `stack_latency` more across the stacks) and its
//     beats share each boundary's lateral link (`lateral_bytes_per_cycle` per direction).
// Requests are served in arrival order per channel (no reordering): a burst is scheduled when
// its AR or AW is accepted; a write's B response waits until its data has left the bus.
// All times are in kernel cycles (doubles: a channel is usually faster than one kernel word
// per cycle). The Python side (hbmforge.sim.timing.calibrated_memory) converts the board
// file's ns and GB/s.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace hbf {

// The parameter block of hbf_set_memory_model, in this order (kDramParams doubles).
struct DramParams {
    double devices;                 // independent DRAM channels (HBM pseudo-channels, DDR4 channels)
    double device_bytes;            // address span of one channel (channel c at c * device_bytes)
    double banks;                   // banks per channel
    double page_bytes;              // row size per channel
    double burst_bytes;             // bytes of one column access
    double burst_cycles;            // bus time of one column access
    double hit_latency;             // column access to first beat at the port, idle (row hit)
    double t_rcd, t_rp, t_ras, t_rrd, t_faw;
    double t_refi, t_rfc;
    double t_wtr;                   // last write data to the next read command
    double t_rtw;                   // last read data to the next write data (bus turnaround)
    double group_channels;          // channels behind one switch port group (0: no switch)
    double groups_per_stack;        // groups per HBM stack
    double hop_latency;             // extra latency per group boundary crossed
    double stack_latency;           // extra latency when crossing between stacks
    double lateral_bytes_per_cycle; // bandwidth of one boundary's lateral link per direction (0: unlimited)
};
constexpr int kDramParams = sizeof(DramParams) / sizeof(double);

struct DramStats {
    uint64_t accesses = 0, row_hits = 0, row_closed = 0, row_misses = 0, refreshes = 0, turnarounds = 0,
             crossing_bursts = 0, crossing_hops = 0;
};
constexpr int kDramStats = 8;

class DramModel {
  public:
    bool enabled() const { return enabled_; }
    void disable() { enabled_ = false; }

    bool configure(const double* values, int n) {
        if (n != kDramParams) return false;
        DramParams p;
        std::copy(values, values + kDramParams, reinterpret_cast<double*>(&p));
        if (!(p.devices >= 1 && p.devices <= 1024 && p.banks >= 1 && p.banks <= 64 && p.device_bytes >= 4096 &&
              p.page_bytes >= p.burst_bytes && p.burst_bytes >= 1 && p.burst_cycles > 0 && p.t_refi > p.t_rfc))
            return false;
        p_ = p;
        channels_.assign(uint32_t(p.devices), Channel{});
        for (uint32_t c = 0; c < channels_.size(); ++c) {
            Channel& ch = channels_[c];
            ch.banks.assign(uint32_t(p.banks), Bank{});
            // refresh staggered over the channels (independent controllers)
            ch.next_refresh = p.t_refi * (1.0 + double(c) / double(channels_.size()));
        }
        groups_ = p.group_channels >= 1 ? uint32_t(std::ceil(p.devices / p.group_channels)) : 1;
        lateral_.assign(2 * groups_, -1e18);
        stats_ = DramStats{};
        enabled_ = true;
        return true;
    }

    const DramStats& stats() const { return stats_; }
    uint32_t channel_of(uint64_t addr) const {
        return uint32_t((addr / uint64_t(p_.device_bytes)) % channels_.size());
    }

    // A read burst of `beats` x `beat_bytes` from `addr`, its AR accepted at `now` by a port whose
    // own channel is `home`: the time its first beat reaches the port and the spacing of the
    // others (at least the bus time of one beat).
    void read_burst(uint32_t home, uint64_t addr, uint32_t beats, uint32_t beat_bytes, double now,
                    double* first, double* step) {
        uint32_t c = channel_of(addr);
        double extra = route(home, c, beats);
        double t0 = -1, t1 = -1;
        uint64_t bytes = uint64_t(beats) * beat_bytes;
        for (uint64_t off = 0; off < bytes; off += uint64_t(p_.burst_bytes)) {
            double t = access(c, addr + off, now + extra * 0.5, false);
            t = cross(home, c, t, p_.burst_bytes);
            if (t0 < 0) t0 = t;
            t1 = t;
        }
        *first = t0 + p_.hit_latency + extra * 0.5 + beat_span(beat_bytes) - p_.burst_cycles;
        *step = beats > 1 ? std::max((t1 - t0) / double(beats - 1), beat_span(beat_bytes)) : 0.0;
        *first = std::max(*first, now + 1.0);
    }

    // A write burst whose AW was accepted at `now`: its column accesses take the bus in AW order
    // (the controller holds the data); returns when the last one has left the bus.
    double write_burst(uint32_t home, uint64_t addr, uint32_t beats, uint32_t beat_bytes, double now) {
        uint32_t c = channel_of(addr);
        double extra = route(home, c, beats);
        double t = now;
        uint64_t bytes = uint64_t(beats) * beat_bytes;
        for (uint64_t off = 0; off < bytes; off += uint64_t(p_.burst_bytes))
            t = cross(home, c, access(c, addr + off, now + extra * 0.5, true), p_.burst_bytes);
        return t + p_.burst_cycles + extra * 0.5;
    }

  private:
    struct Bank { int64_t row = -1; double act = -1e18, ready = -1e18, last = -1e18; };
    struct Channel {
        std::vector<Bank> banks;
        double bus = -1e18;             // the bus is free from here
        double last_read_end = -1e18, last_write_end = -1e18;
        double acts[4] = {-1e18, -1e18, -1e18, -1e18};   // the last four ACTIVATEs (tFAW)
        int act_i = 0;
        double next_refresh = 0;
        bool last_write = false;
    };
    double beat_span(uint32_t beat_bytes) const {
        return p_.burst_cycles * std::ceil(double(beat_bytes) / p_.burst_bytes);
    }

    // One column access on channel c arriving at `t`: the time its data occupies the bus.
    double access(uint32_t c, uint64_t addr, double t, bool write) {
        Channel& ch = channels_[c];
        uint64_t off = addr % uint64_t(p_.device_bytes);
        uint64_t page = off / uint64_t(p_.page_bytes);
        uint32_t b = uint32_t(page % uint64_t(p_.banks));
        int64_t row = int64_t(page / uint64_t(p_.banks));
        double start = std::max(t, ch.bus);
        if (write != ch.last_write) {                     // bus turnaround
            if (write) start = std::max(start, ch.last_read_end + p_.t_rtw);
            else start = std::max(start, ch.last_write_end + p_.t_wtr);
            if (ch.last_read_end > -1e17 || ch.last_write_end > -1e17) stats_.turnarounds++;
        }
        // refresh: the channel is busy for tRFC every tREFI; rows close
        while (start + p_.burst_cycles > ch.next_refresh) {
            start = std::max(start, ch.next_refresh + p_.t_rfc);
            for (Bank& bk : ch.banks) { bk.row = -1; bk.ready = std::max(bk.ready, ch.next_refresh + p_.t_rfc); }
            ch.next_refresh += p_.t_refi;
            stats_.refreshes++;
        }
        Bank& bk = ch.banks[b];
        if (bk.row == row) {
            stats_.row_hits++;
        } else {
            double act;
            if (bk.row < 0) {
                stats_.row_closed++;
                act = std::max(t, bk.ready);
            } else {
                stats_.row_misses++;
                // precharge after tRAS and after the open row's last access has left the bus
                act = std::max({t, bk.ready, bk.act + p_.t_ras, bk.last + p_.burst_cycles}) + p_.t_rp;
            }
            // tRRD after the last ACTIVATE, tFAW after the fourth last
            int last = (ch.act_i + 3) & 3;
            act = std::max({act, ch.acts[last] + p_.t_rrd, ch.acts[ch.act_i] + p_.t_faw});
            ch.acts[ch.act_i] = act;
            ch.act_i = (ch.act_i + 1) & 3;
            bk.act = act;
            bk.row = row;
            start = std::max(start, act + p_.t_rcd);
        }
        bk.last = start;
        ch.bus = start + p_.burst_cycles;
        if (write) ch.last_write_end = ch.bus;
        else ch.last_read_end = ch.bus;
        ch.last_write = write;
        stats_.accesses++;
        return start;
    }

    // Extra latency of reaching channel c from a port whose own channel is `home`.
    double route(uint32_t home, uint32_t c, uint32_t) {
        if (p_.group_channels < 1) return 0.0;
        uint32_t g0 = home / uint32_t(p_.group_channels), g1 = c / uint32_t(p_.group_channels);
        if (g0 == g1) return 0.0;
        uint32_t hops = g0 > g1 ? g0 - g1 : g1 - g0;
        stats_.crossing_bursts++;
        stats_.crossing_hops += hops;
        double extra = hops * p_.hop_latency;
        uint32_t gps = p_.groups_per_stack >= 1 ? uint32_t(p_.groups_per_stack) : groups_;
        if (g0 / gps != g1 / gps) extra += p_.stack_latency;
        return extra;
    }

    // Beats crossing group boundaries share each boundary's lateral link (per direction).
    double cross(uint32_t home, uint32_t c, double t, double bytes) {
        if (p_.group_channels < 1 || p_.lateral_bytes_per_cycle <= 0) return t;
        uint32_t g0 = home / uint32_t(p_.group_channels), g1 = c / uint32_t(p_.group_channels);
        if (g0 == g1) return t;
        uint32_t lo = std::min(g0, g1), hi = std::max(g0, g1), dir = g1 > g0 ? 1 : 0;
        double span = bytes / p_.lateral_bytes_per_cycle;
        for (uint32_t b = lo; b < hi; ++b) t = std::max(t, lateral_[2 * b + dir]);
        for (uint32_t b = lo; b < hi; ++b) lateral_[2 * b + dir] = t + span;
        return t;
    }

    bool enabled_ = false;
    DramParams p_{};
    std::vector<Channel> channels_;
    std::vector<double> lateral_;
    uint32_t groups_ = 1;
    DramStats stats_;
};

}  // namespace hbf
