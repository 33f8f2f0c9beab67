// Collects AXI rule violations seen by the port models and the control driver.
// Every violation is counted; the first kMaxMessages keep their text.
#pragma once
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace hbf {

class ProtocolLog {
  public:
    static constexpr size_t kMaxMessages = 100;

    void report(const char* fmt, ...) __attribute__((format(printf, 2, 3))) {
        ++count_;
        if (messages_.size() >= kMaxMessages) return;
        char text[512];
        va_list ap;
        va_start(ap, fmt);
        std::vsnprintf(text, sizeof text, fmt, ap);
        va_end(ap);
        messages_.emplace_back(text);
    }

    uint64_t count() const { return count_; }

    std::string text() const {
        std::string out;
        for (const auto& m : messages_) { out += m; out += '\n'; }
        if (count_ > messages_.size())
            out += "... and " + std::to_string(count_ - messages_.size()) + " more\n";
        return out;
    }

  private:
    uint64_t count_ = 0;
    std::vector<std::string> messages_;
};

}  // namespace hbf
