// AXI4-Lite master that drives the kernel's s_axi_control port, one access at
// a time. Outputs depend only on its own state (valid held until the
// handshake); the harness clocks it together with the memory ports, so a
// register access while the kernel runs does not freeze the memory models.
#pragma once
#include <cstdint>

namespace hbf {

struct LiteMasterOut {
    bool awvalid = false, wvalid = false, bready = false, arvalid = false, rready = false;
    uint32_t awaddr = 0, wdata = 0, wstrb = 0, araddr = 0;
};

struct LiteSlaveIn {
    bool awready = false, wready = false, bvalid = false, arready = false, rvalid = false;
    uint32_t bresp = 0, rdata = 0, rresp = 0;
};

class AxiLiteMaster {
  public:
    void start_write(uint32_t addr, uint32_t data) {
        op_ = Op::Write;
        out_ = LiteMasterOut{};
        out_.awvalid = out_.wvalid = out_.bready = true;
        out_.awaddr = addr;
        out_.wdata = data;
        out_.wstrb = 0xF;
        resp_ = 0;
    }

    void start_read(uint32_t addr) {
        op_ = Op::Read;
        out_ = LiteMasterOut{};
        out_.arvalid = out_.rready = true;
        out_.araddr = addr;
        resp_ = 0;
    }

    bool busy() const { return op_ != Op::None; }
    void abort() { op_ = Op::None; out_ = LiteMasterOut{}; }
    const LiteMasterOut& out() const { return out_; }
    uint32_t read_data() const { return rdata_; }
    uint32_t response() const { return resp_; }

    // Before a rising edge: record the handshakes the slave's outputs complete.
    void update(const LiteSlaveIn& in) {
        if (op_ == Op::Write) {
            if (out_.awvalid && in.awready) out_.awvalid = false;
            if (out_.wvalid && in.wready) out_.wvalid = false;
            if (in.bvalid && !out_.awvalid && !out_.wvalid) {
                resp_ = in.bresp;
                abort();
            }
        } else if (op_ == Op::Read) {
            if (out_.arvalid && in.arready) out_.arvalid = false;
            else if (!out_.arvalid && in.rvalid) {
                rdata_ = in.rdata;
                resp_ = in.rresp;
                abort();
            }
        }
    }

  private:
    enum class Op { None, Write, Read };
    Op op_ = Op::None;
    LiteMasterOut out_;
    uint32_t rdata_ = 0, resp_ = 0;
};

}  // namespace hbf
