// The multi-device co-simulation: the Verilated aggregation switch and a network model that joins
// it to N device co-simulation libraries (each a Verilated kernel with its own harness, driven
// through the C functions of hbf_abi.h by pointer), behind the C ABI below (hbmforge.sim.network).
//
// Time advances in quanta of q <= the smallest link latency: every node (devices, switch) is
// stepped to the end of the quantum, the beats that left each transmit stream are grouped into
// packets (tlast), each packet's fate on its link is drawn (loss: Bernoulli or Gilbert-Elliott;
// duplicate; hold-back that reorders it) from the link's own seeded generator, and the packets
// that arrive before the end of the next quantum are handed to the receiving stream, stamped
// with their arrival cycle. A beat leaving at cycle t arrives at t + latency >= the next quantum,
// so no node ever sees a beat later than it would in a cycle-by-cycle simulation: the result is
// exact and the same for a seed whatever the quantum. The links' rate is the transmit streams'
// pacing (hbf_stream_config on the devices, hbn_switch_stream_config on the switch).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <queue>
#include <vector>

#include "switch_ports.h"  // generated: the switch's ports and counters

#if defined(__GNUC__)
#define HBN_API __attribute__((visibility("default")))
#else
#define HBN_API
#endif

namespace hbn {

using StepFn = void (*)(void*, uint64_t);
using CyclesFn = uint64_t (*)(void*);
using TakeFn = uint64_t (*)(void*, int, uint8_t*, uint64_t*, uint8_t*, uint64_t);
using GiveFn = uint64_t (*)(void*, int, const uint8_t*, const uint64_t*, const uint8_t*, uint64_t);
using IrqFn = int (*)(void*);

// splitmix64: the same stream of numbers on every platform (std distributions are not)
struct Rng {
    uint64_t s;
    explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull) {}
    uint64_t next() {
        uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
    uint64_t below(uint64_t n) { return n ? next() % n : 0; }
};

struct Packet {
    std::vector<uint8_t> data;      // beats * bytes
    std::vector<uint64_t> stamps;   // global cycle each beat arrives
    uint64_t arrive = 0, seq = 0;
};

struct Later {
    bool operator()(const Packet* a, const Packet* b) const {
        return a->arrive != b->arrive ? a->arrive > b->arrive : a->seq > b->seq;
    }
};

// One direction of a link: latency and faults, packet by packet.
class Link {
  public:
    uint32_t latency = 100;
    double loss = 0, dup = 0, reorder = 0;
    uint32_t reorder_cycles = 200;
    bool burst = false;
    double p_gb = 0, p_bg = 0, loss_good = 0, loss_bad = 0;
    uint64_t packets = 0, lost = 0, duplicated = 0, reordered = 0, beats = 0;

    explicit Link(uint64_t seed, uint32_t bytes) : rng_(seed), bytes_(bytes) {}

    // beats that left the sender (global departure cycles); whole packets get their fate
    void ingest(const uint8_t* data, const uint64_t* stamps, const uint8_t* lasts, uint64_t n) {
        for (uint64_t i = 0; i < n; ++i) {
            cur_.data.insert(cur_.data.end(), data + i * bytes_, data + (i + 1) * bytes_);
            cur_.stamps.push_back(stamps[i]);
            ++beats;
            if (lasts[i]) {
                fate(cur_);
                cur_ = Packet{};
            }
        }
    }

    // packets arriving before `limit`, in arrival order
    template <typename F>
    void release(uint64_t limit, F&& deliver) {
        while (!q_.empty() && q_.top()->arrive < limit) {
            std::unique_ptr<Packet> p(q_.top());
            q_.pop();
            deliver(*p);
        }
    }

    ~Link() {
        while (!q_.empty()) { delete q_.top(); q_.pop(); }
    }

  private:
    void fate(const Packet& p) {
        ++packets;
        bool lost_now;
        if (burst) {
            bad_ = bad_ ? (rng_.uniform() >= p_bg) : (rng_.uniform() < p_gb);
            lost_now = rng_.uniform() < (bad_ ? loss_bad : loss_good);
        } else {
            lost_now = rng_.uniform() < loss;
        }
        bool twice = rng_.uniform() < dup;
        uint64_t hold = rng_.uniform() < reorder ? 1 + rng_.below(reorder_cycles) : 0;
        if (lost_now) { ++lost; return; }
        uint64_t dur = p.stamps.back() - p.stamps.front() + 1;
        for (int copy = 0; copy < (twice ? 2 : 1); ++copy) {
            auto* q = new Packet;
            q->data = p.data;
            q->stamps = p.stamps;
            uint64_t shift = latency + hold + (copy ? dur : 0);
            for (auto& s : q->stamps) s += shift;
            q->arrive = q->stamps.front();
            q->seq = seq_++;
            q_.push(q);
        }
        if (twice) ++duplicated;
        if (hold) ++reordered;
    }

    Rng rng_;
    uint32_t bytes_;
    bool bad_ = false;
    uint64_t seq_ = 0;
    Packet cur_;
    std::priority_queue<Packet*, std::vector<Packet*>, Later> q_;
};

// The Verilated switch with a stream model on every port.
class Switch {
  public:
    Switch() : ctx_(new VerilatedContext), top_(new Vswitch{ctx_.get(), "TOP"}) {
        ctx_->fatalOnError(false);
        design::init_streams(streams_);
        top_->ap_rst_n = 0;
        step(16);
        top_->ap_rst_n = 1;
    }
    ~Switch() { top_->final(); }

    void step(uint64_t n) {
        for (uint64_t i = 0; i < n && !ctx_->gotFinish(); ++i) {
            design::drive(top_.get(), streams_, now_);
            top_->ap_clk = 0;
            top_->eval();
            design::sample(top_.get(), streams_, now_);
            top_->ap_clk = 1;
            top_->eval();
            ++now_;
        }
    }
    uint64_t cycles() const { return now_; }
    hbf::StreamSet& streams() { return streams_; }
    void counters(uint64_t* out) { design::counters(top_.get(), out); }

  private:
    std::unique_ptr<VerilatedContext> ctx_;
    std::unique_ptr<Vswitch> top_;
    hbf::StreamSet streams_;
    uint64_t now_ = 0;
};

struct Device {
    void* h = nullptr;
    StepFn step = nullptr;
    CyclesFn cycles = nullptr;
    TakeFn take = nullptr;
    GiveFn give = nullptr;
    IrqFn irq = nullptr;
    int s_in = 0, s_out = 1;       // its stream indexes: from the switch, to the switch
    int64_t offset = 0;            // local cycle - global cycle
    bool attached = false;
};

class Net {
  public:
    Net(int devices, uint64_t seed) : devs_(devices) {
        now_ = sw_.cycles();
        for (int i = 0; i < devices; ++i) {
            up_.emplace_back(new Link(seed * 1009 + 2 * i, design::kWordBytes));
            down_.emplace_back(new Link(seed * 1009 + 2 * i + 1, design::kWordBytes));
        }
        buf_.resize(kChunk * design::kWordBytes);
        stamps_.resize(kChunk);
        lasts_.resize(kChunk);
    }

    int devices() const { return int(devs_.size()); }
    Switch& sw() { return sw_; }
    Link* link(int i, int dir) {
        if (i < 0 || i >= devices()) return nullptr;
        return dir ? down_[i].get() : up_[i].get();
    }
    uint64_t now() const { return now_; }

    bool attach(int i, const Device& d) {
        if (i < 0 || i >= devices() || i >= design::kPorts) return false;
        devs_[i] = d;
        devs_[i].attached = true;
        devs_[i].offset = int64_t(d.cycles(d.h)) - int64_t(now_);
        return true;
    }

    // run until every device in `wait` raised its interrupt (checked at quantum ends) or
    // `max_cycles` passed; returns the devices whose interrupt is high
    uint64_t run(uint64_t max_cycles, uint64_t wait) {
        uint64_t q = UINT64_MAX;
        for (int i = 0; i < devices(); ++i) q = std::min<uint64_t>({q, up_[i]->latency, down_[i]->latency});
        if (q == 0 || q == UINT64_MAX) q = 1;
        // a device may have run on its own between two runs (register accesses, or a whole
        // single-device program): that is not network time, so its clock is re-based on the
        // network's rather than the network (and every other device, in one step without any
        // exchange) catching up with it
        now_ = std::max(now_, sw_.cycles());
        for (auto& d : devs_)
            if (d.attached) d.offset = int64_t(d.cycles(d.h)) - int64_t(now_);
        uint64_t end = now_ + max_cycles;
        uint64_t done = irqs();
        while (now_ < end && (wait == 0 || (done & wait) != wait)) {   // wait 0: run max_cycles
            uint64_t target = std::min(now_ + q, end);
            for (auto& d : devs_) {
                if (!d.attached) continue;
                int64_t local = int64_t(target) + d.offset, have = int64_t(d.cycles(d.h));
                if (local > have) d.step(d.h, uint64_t(local - have));
            }
            if (target > sw_.cycles()) sw_.step(target - sw_.cycles());
            now_ = target;
            exchange(now_ + q);
            done = irqs();
        }
        return done;
    }

  private:
    static constexpr uint64_t kChunk = 4096;

    uint64_t irqs() {
        uint64_t m = 0;
        for (int i = 0; i < devices(); ++i)
            if (devs_[i].attached && devs_[i].irq(devs_[i].h)) m |= 1ull << i;
        return m;
    }

    void exchange(uint64_t limit) {
        auto& st = sw_.streams();
        for (int i = 0; i < devices(); ++i) {
            Device& d = devs_[i];
            if (d.attached) {                          // device -> uplink
                uint64_t n;
                while ((n = d.take(d.h, d.s_out, buf_.data(), stamps_.data(), lasts_.data(), kChunk))) {
                    for (uint64_t k = 0; k < n; ++k) stamps_[k] = uint64_t(int64_t(stamps_[k]) - d.offset);
                    up_[i]->ingest(buf_.data(), stamps_.data(), lasts_.data(), n);
                }
            }
            uint64_t n;                                 // switch port i -> downlink
            while ((n = st.out(2 * i + 1)->take(buf_.data(), stamps_.data(), lasts_.data(), kChunk)))
                down_[i]->ingest(buf_.data(), stamps_.data(), lasts_.data(), n);
        }
        for (int i = 0; i < devices(); ++i) {
            up_[i]->release(limit, [&](Packet& p) {
                std::vector<uint8_t> last(p.stamps.size(), 0);
                last.back() = 1;
                st.in(2 * i)->give(p.data.data(), p.stamps.data(), last.data(), p.stamps.size());
            });
            Device& d = devs_[i];
            down_[i]->release(limit, [&](Packet& p) {
                if (!d.attached) return;
                std::vector<uint8_t> last(p.stamps.size(), 0);
                last.back() = 1;
                for (auto& s : p.stamps) s = uint64_t(int64_t(s) + d.offset);
                d.give(d.h, d.s_in, p.data.data(), p.stamps.data(), last.data(), p.stamps.size());
            });
        }
    }

    std::vector<Device> devs_;
    std::vector<std::unique_ptr<Link>> up_, down_;
    Switch sw_;
    uint64_t now_ = 0;
    std::vector<uint8_t> buf_;
    std::vector<uint64_t> stamps_;
    std::vector<uint8_t> lasts_;
};

}  // namespace hbn

using hbn::Net;
static Net* N(void* h) { return static_cast<Net*>(h); }

extern "C" {

HBN_API int hbn_ports(void) { return hbn::design::kPorts; }
HBN_API int hbn_word_bytes(void) { return int(hbn::design::kWordBytes); }
HBN_API int hbn_num_counters(void) { return hbn::design::kCounters; }
HBN_API const char* hbn_counter_name(int i) {
    return i >= 0 && i < hbn::design::kCounters ? hbn::design::kCounterNames[i] : "";
}

HBN_API void* hbn_create(int devices, uint64_t seed) {
    if (devices < 1 || devices > hbn::design::kPorts) return nullptr;
    try {
        return new Net(devices, seed);
    } catch (...) {
        return nullptr;
    }
}

HBN_API void hbn_destroy(void* h) { delete N(h); }

HBN_API int hbn_attach(void* h, int index, void* dev, void* step, void* cycles, void* take, void* give, void* irq,
                       int s_in, int s_out) {
    hbn::Device d;
    d.h = dev;
    d.step = reinterpret_cast<hbn::StepFn>(step);
    d.cycles = reinterpret_cast<hbn::CyclesFn>(cycles);
    d.take = reinterpret_cast<hbn::TakeFn>(take);
    d.give = reinterpret_cast<hbn::GiveFn>(give);
    d.irq = reinterpret_cast<hbn::IrqFn>(irq);
    d.s_in = s_in;
    d.s_out = s_out;
    return N(h)->attach(index, d) ? 1 : 0;
}

// dir 0: device -> switch, 1: switch -> device. burst: 0 Bernoulli `loss`, 1 Gilbert-Elliott
HBN_API int hbn_set_link(void* h, int index, int dir, uint32_t latency, double loss, int burst, double p_gb,
                         double p_bg, double loss_good, double loss_bad, double dup, double reorder,
                         uint32_t reorder_cycles) {
    hbn::Link* l = N(h)->link(index, dir);
    if (!l || latency == 0) return 0;
    l->latency = latency;
    l->loss = loss;
    l->burst = burst != 0;
    l->p_gb = p_gb;
    l->p_bg = p_bg;
    l->loss_good = loss_good;
    l->loss_bad = loss_bad;
    l->dup = dup;
    l->reorder = reorder;
    l->reorder_cycles = reorder_cycles ? reorder_cycles : 1;
    return 1;
}

HBN_API void hbn_switch_stream_config(void* h, int port, double bytes_per_cycle, uint32_t buffer_beats) {
    if (auto* o = N(h)->sw().streams().out(2 * port + 1)) o->configure(bytes_per_cycle, buffer_beats);
}

HBN_API uint64_t hbn_run(void* h, uint64_t max_cycles, uint64_t wait) { return N(h)->run(max_cycles, wait); }

HBN_API uint64_t hbn_now(void* h) { return N(h)->now(); }

// packets, lost, duplicated, reordered, beats
HBN_API void hbn_link_stats(void* h, int index, int dir, uint64_t out[5]) {
    std::memset(out, 0, 5 * sizeof(uint64_t));
    if (hbn::Link* l = N(h)->link(index, dir)) {
        out[0] = l->packets;
        out[1] = l->lost;
        out[2] = l->duplicated;
        out[3] = l->reordered;
        out[4] = l->beats;
    }
}

HBN_API void hbn_switch_counters(void* h, uint64_t* out) { N(h)->sw().counters(out); }

// raw beats into switch port `port` (from the next cycle on): a forged or malformed packet
HBN_API int hbn_switch_give(void* h, int port, const uint8_t* data, const uint8_t* lasts, uint64_t n) {
    auto* in = N(h)->sw().streams().in(2 * port);
    if (!in || port < 0 || port >= hbn::design::kPorts) return 0;
    std::vector<uint64_t> stamps(n, N(h)->sw().cycles());
    in->give(data, stamps.data(), lasts, n);
    return 1;
}

}  // extern "C"
