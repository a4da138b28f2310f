// The line protocol of external judges (train/rewards.h's command= and server= rewards,
// train/judges.h's command= and server= judges): one JSON line in per item, one answer line out
// per item, in order. This file runs the process and collects the answers; what a line holds is
// the caller's (a reward, a choice).
//
// A one-shot command (persistent false) is started for each batch, gets the batch on its stdin,
// which is then closed, and must exit with status 0. A server (persistent true) is started at the
// first batch and kept: it answers each batch's lines as it reads them, on a stdin left open, and
// is stopped (stdin closed, killed a few seconds later) when the LineCommand is destroyed.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace lamina::train {

// How errors speak of a command and of what it is given.
struct LineCommandWords {
  std::string what = "reward command";  // "reward command 'CMD' exited with status 3 ..."
  std::string item = "completion";      // one input line stands for one of these
  std::string items = "completions";
  std::string verb = "scoring";         // "... while scoring 4 completions"
};

class LineCommand {
 public:
  LineCommand(std::string command, bool persistent, LineCommandWords words = {});
  ~LineCommand();
  LineCommand(const LineCommand&) = delete;
  LineCommand& operator=(const LineCommand&) = delete;

  // Sends `input` (`count` lines, each ending in '\n') and calls `answer(line, number)` for each of
  // the `count` answer lines in order ('\r' dropped; `number` counts the command's output lines
  // from 1, over the whole run for a server). A command that cannot start, fails, stops reading,
  // or answers more or fewer lines than it was given is an error naming the command and the line;
  // so is what `answer` throws, with the line's number and text added.
  void exchange(const std::string& input, size_t count,
                const std::function<void(const std::string& line, int64_t number)>& answer);

  const std::string& command() const { return command_; }
  bool persistent() const { return persistent_; }

 private:
  class Process;
  std::string command_;
  bool persistent_;
  LineCommandWords words_;
  std::unique_ptr<Process> server_;  // the running server (persistent only)
  std::string leftover_;             // what a server wrote beyond its last batch's answers
  int64_t lines_answered_ = 0;       // a server's answer lines so far
};

}  // namespace lamina::train
