// One sparse, byte-addressed 64-bit memory shared by every AXI port.
// Pages are allocated (zeroed) on first write; reads of untouched pages
// return zeros without allocating. A one-entry page cache makes the common
// case (consecutive beats of one burst) a compare and a memcpy.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <unordered_map>

namespace hbf {

class SparseMemory {
  public:
    static constexpr unsigned kPageBits = 16;                 // 64 KiB pages
    static constexpr uint64_t kPageSize = uint64_t(1) << kPageBits;
    static constexpr uint64_t kPageMask = kPageSize - 1;

    void write(uint64_t addr, const uint8_t* src, uint64_t n) {
        while (n) {
            uint64_t off = addr & kPageMask, chunk = min_(n, kPageSize - off);
            std::memcpy(page(addr, true) + off, src, chunk);
            addr += chunk; src += chunk; n -= chunk;
        }
    }

    void read(uint64_t addr, uint8_t* dst, uint64_t n) {
        while (n) {
            uint64_t off = addr & kPageMask, chunk = min_(n, kPageSize - off);
            const uint8_t* p = page(addr, false);
            if (p) std::memcpy(dst, p + off, chunk);
            else std::memset(dst, 0, chunk);
            addr += chunk; dst += chunk; n -= chunk;
        }
    }

    // Write the bytes of `src` whose bit in the little-endian strobe mask is set.
    void write_strobed(uint64_t addr, const uint8_t* src, const uint8_t* strobe, uint64_t n) {
        bool all = true;
        for (uint64_t i = 0; i < n / 8 && all; ++i) all = strobe[i] == 0xFF;
        for (uint64_t i = n / 8 * 8; i < n && all; ++i) all = (strobe[i / 8] >> (i % 8)) & 1;
        if (all) { write(addr, src, n); return; }
        for (uint64_t i = 0; i < n; ++i)
            if ((strobe[i / 8] >> (i % 8)) & 1) write(addr + i, src + i, 1);
    }

    uint64_t pages_allocated() const { return pages_.size(); }

  private:
    static uint64_t min_(uint64_t a, uint64_t b) { return a < b ? a : b; }

    uint8_t* page(uint64_t addr, bool create) {
        uint64_t index = addr >> kPageBits;
        if (last_ && index == last_index_) return last_;
        auto it = pages_.find(index);
        if (it == pages_.end()) {
            if (!create) return nullptr;
            it = pages_.emplace(index, std::unique_ptr<uint8_t[]>(new uint8_t[kPageSize]())).first;
        }
        last_index_ = index;
        last_ = it->second.get();
        return last_;
    }

    std::unordered_map<uint64_t, std::unique_ptr<uint8_t[]>> pages_;
    uint64_t last_index_ = 0;
    uint8_t* last_ = nullptr;
};

}  // namespace hbf
