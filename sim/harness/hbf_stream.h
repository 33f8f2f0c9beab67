// AXI4-Stream ports of a co-simulated design (the network links of hbmforge.sim.network).
//
// StreamOut models the transmit side of a link: the design's m_axis_<name> beats go into a
// small buffer (``buffer_beats``; tready is low while it is full) and leave it at the link
// rate (``bytes_per_cycle``), each stamped with the cycle it left: what the network model
// takes (hbf_stream_take). StreamIn is the receive side: beats given to it by the network
// model (hbf_stream_give) carry the cycle they arrive; the design's s_axis_<name> sees a
// beat from that cycle on, in order, and takes it whenever it is ready (the receive buffer
// is unbounded: the network model decides what is lost).
//
// Like the AXI port models, both are Moore machines: present() drives the pins from state,
// update() takes the sampled pins at the clock edge.
#pragma once
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <vector>

namespace hbf {

struct StreamBeat {
    uint64_t stamp = 0;          // cycle it left (StreamOut) or arrives (StreamIn)
    bool last = false;
    std::vector<uint8_t> data;   // little-endian, width / 8 bytes
};

class StreamOut {
  public:
    explicit StreamOut(uint32_t bytes) : bytes_(bytes) {}

    void configure(double bytes_per_cycle, uint32_t buffer_beats) {
        rate_ = bytes_per_cycle > 0 ? bytes_per_cycle : 1e300;
        buffer_ = buffer_beats ? buffer_beats : 1;
    }

    bool tready() const { return fifo_.size() < buffer_; }

    // the handshake of this cycle, then the serializer (one beat leaves once its bytes are paid)
    void update(bool tvalid, bool tlast, const uint8_t* tdata, uint64_t now) {
        if (tvalid && tready()) {
            StreamBeat b;
            b.last = tlast;
            b.data.assign(tdata, tdata + bytes_);
            fifo_.push_back(std::move(b));
            ++beats_in_;
        }
        credit_ += rate_;
        if (credit_ > rate_ + bytes_) credit_ = rate_ + bytes_;   // an idle link saves no more than a beat
        if (!fifo_.empty() && credit_ >= bytes_) {
            credit_ -= bytes_;
            StreamBeat b = std::move(fifo_.front());
            fifo_.pop_front();
            b.stamp = now;
            wire_.push_back(std::move(b));
        }
    }

    // move up to max beats that left the link (oldest first) out; returns the count
    uint64_t take(uint8_t* data, uint64_t* stamps, uint8_t* lasts, uint64_t max) {
        uint64_t n = 0;
        while (n < max && !wire_.empty()) {
            StreamBeat& b = wire_.front();
            if (data) std::memcpy(data + n * bytes_, b.data.data(), bytes_);
            if (stamps) stamps[n] = b.stamp;
            if (lasts) lasts[n] = b.last;
            wire_.pop_front();
            ++n;
        }
        return n;
    }

    uint64_t beats_in() const { return beats_in_; }
    uint64_t pending() const { return fifo_.size() + wire_.size(); }

  private:
    uint32_t bytes_;
    double rate_ = 1e300, credit_ = 0;
    uint32_t buffer_ = 4;
    std::deque<StreamBeat> fifo_, wire_;
    uint64_t beats_in_ = 0;
};

class StreamIn {
  public:
    explicit StreamIn(uint32_t bytes) : bytes_(bytes), zero_(bytes, 0) {}

    bool tvalid(uint64_t now) const { return !q_.empty() && q_.front().stamp <= now; }
    bool tlast() const { return !q_.empty() && q_.front().last; }
    const uint8_t* tdata() const { return q_.empty() ? zero_.data() : q_.front().data.data(); }

    void update(bool tready, uint64_t now) {
        if (tready && tvalid(now)) {
            q_.pop_front();
            ++beats_out_;
        }
    }

    void give(const uint8_t* data, const uint64_t* stamps, const uint8_t* lasts, uint64_t n) {
        for (uint64_t i = 0; i < n; ++i) {
            StreamBeat b;
            b.stamp = stamps ? stamps[i] : 0;
            if (!q_.empty() && b.stamp < q_.back().stamp) b.stamp = q_.back().stamp;   // keep the order
            b.last = lasts ? lasts[i] != 0 : true;
            b.data.assign(data + i * bytes_, data + (i + 1) * bytes_);
            q_.push_back(std::move(b));
        }
    }

    uint64_t beats_out() const { return beats_out_; }
    uint64_t pending() const { return q_.size(); }

  private:
    uint32_t bytes_;
    std::vector<uint8_t> zero_;
    std::deque<StreamBeat> q_;
    uint64_t beats_out_ = 0;
};

// The stream ports of one design, in manifest order (each an in or an out).
class StreamSet {
  public:
    void add(bool is_in, uint32_t bytes) {
        ins_.emplace_back(is_in ? new StreamIn(bytes) : nullptr);
        outs_.emplace_back(is_in ? nullptr : new StreamOut(bytes));
    }
    int size() const { return int(ins_.size()); }
    StreamIn* in(int i) { return i >= 0 && i < size() ? ins_[i].get() : nullptr; }
    StreamOut* out(int i) { return i >= 0 && i < size() ? outs_[i].get() : nullptr; }

  private:
    std::vector<std::unique_ptr<StreamIn>> ins_;
    std::vector<std::unique_ptr<StreamOut>> outs_;
};

}  // namespace hbf
