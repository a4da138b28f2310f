// Runs the external judges' processes and collects their answer lines (train/line_command.h).
#include "train/line_command.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "tensor/error.h"

extern char** environ;

namespace lamina::train {
namespace {

// A pipe's two ends, closed when it goes out of scope.
struct Pipe {
  int read = -1, write = -1;
  Pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw Error(str_cat("external command: cannot make a pipe: ", std::strerror(errno)));
    read = fds[0];
    write = fds[1];
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  void close_read() {
    if (read >= 0) ::close(read);
    read = -1;
  }
  void close_write() {
    if (write >= 0) ::close(write);
    write = -1;
  }
};

// SIGPIPE blocked in this thread while a judge's stdin is written (a judge that exits early
// must give EPIPE, an error to report, not end lamina), and any SIGPIPE it raised consumed.
struct SigpipeBlocked {
  sigset_t pipe_set{}, previous{};
  SigpipeBlocked() {
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &previous);
  }
  ~SigpipeBlocked() {
    const timespec zero{0, 0};
    while (sigtimedwait(&pipe_set, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  }
};

}  // namespace

// /bin/sh -c COMMAND, its stdin and stdout piped to lamina, its stderr lamina's.
class LineCommand::Process {
 public:
  Process(const std::string& command, const std::string& what) : command_(command), what_(what) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, to_child_.read, 0);
    posix_spawn_file_actions_adddup2(&actions, from_child_.write, 1);
    const char* argv[] = {"/bin/sh", "-c", command.c_str(), nullptr};
    const int spawned = posix_spawn(&pid_, "/bin/sh", &actions, nullptr, const_cast<char* const*>(argv), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (spawned != 0) throw Error(str_cat(what, " '", command, "' does not start: ", std::strerror(spawned)));
    to_child_.close_read();
    from_child_.close_write();
    fcntl(to_child_.write, F_SETFL, fcntl(to_child_.write, F_GETFL) | O_NONBLOCK);
  }
  // Still running (an error path, or a server at the end of the run): its stdin is closed, which
  // ends a well-behaved judge; one still running a few seconds later is killed.
  ~Process() {
    to_child_.close_write();
    from_child_.close_read();
    if (pid_ <= 0 || exited_) return;
    for (int tries = 0; tries < 300; ++tries) {
      if (::waitpid(pid_, &status_, WNOHANG) == pid_) return;
      ::usleep(10000);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, &status_, 0);
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Writes `input` while reading what the judge writes into `output` (so that a judge that
  // answers as it reads never blocks on a full pipe), until all of it is written and
  // `answered(output)` holds, or the judge closes its stdout. With `then_close`, its stdin is
  // closed once the input is written. Returns what went wrong writing, or "".
  std::string exchange(const std::string& input, bool then_close, std::string& output,
                       const std::function<bool(const std::string&)>& answered) {
    LAMINA_CHECK(to_child_.write >= 0, what_, " '", command_, "': its input is closed already");
    std::string write_error;
    SigpipeBlocked blocked;
    size_t written = 0;
    bool writing = true;
    const auto finish_writing = [&] {
      writing = false;
      if (then_close) to_child_.close_write();
    };
    if (input.empty()) finish_writing();
    while ((writing || !answered(output)) && from_child_.read >= 0) {
      pollfd fds[2];
      int count = 0;
      if (writing) fds[count++] = {to_child_.write, POLLOUT, 0};
      fds[count++] = {from_child_.read, POLLIN, 0};
      if (::poll(fds, nfds_t(count), -1) < 0) {
        if (errno == EINTR) continue;
        throw Error(str_cat(what_, " '", command_, "': poll failed: ", std::strerror(errno)));
      }
      for (int k = 0; k < count; ++k) {
        if (fds[k].revents == 0) continue;
        if (writing && fds[k].fd == to_child_.write) {
          const ssize_t n = ::write(to_child_.write, input.data() + written, input.size() - written);
          if (n > 0) written += size_t(n);
          if (n < 0 && errno != EAGAIN && errno != EINTR) {
            // It closed its stdin before reading everything: it exited, or stopped reading.
            write_error = str_cat("it stopped reading its input after ", written, " of ", input.size(), " bytes (",
                                  std::strerror(errno), ")");
            to_child_.close_write();
            writing = false;
          } else if (written == input.size()) {
            finish_writing();
          }
        } else if (fds[k].fd == from_child_.read) {
          char buffer[4096];
          const ssize_t n = ::read(from_child_.read, buffer, sizeof buffer);
          if (n > 0) output.append(buffer, size_t(n));
          else if (n == 0 || (errno != EAGAIN && errno != EINTR)) from_child_.close_read();
        }
      }
    }
    return write_error;
  }

  bool output_open() const { return from_child_.read >= 0; }

  // Waits for it to exit; "" when it exited with status 0, else how it ended.
  std::string wait() {
    to_child_.close_write();
    if (!exited_) {
      while (::waitpid(pid_, &status_, 0) < 0 && errno == EINTR) {
      }
      exited_ = true;
    }
    if (WIFEXITED(status_) && WEXITSTATUS(status_) == 0) return "";
    if (WIFEXITED(status_))
      return str_cat("exited with status ", WEXITSTATUS(status_),
                     WEXITSTATUS(status_) == 127 ? " (the shell could not run it)" : "");
    if (WIFSIGNALED(status_)) return str_cat("was killed by signal ", WTERMSIG(status_));
    return "ended abnormally";
  }

 private:
  std::string command_, what_;
  Pipe to_child_, from_child_;
  pid_t pid_ = 0;
  int status_ = 0;
  bool exited_ = false;
};



namespace {

size_t count_lines(const std::string& text) { return size_t(std::count(text.begin(), text.end(), '\n')); }

}  // namespace

LineCommand::LineCommand(std::string command, bool persistent, LineCommandWords words)
    : command_(std::move(command)), persistent_(persistent), words_(std::move(words)) {}

LineCommand::~LineCommand() = default;

void LineCommand::exchange(const std::string& input, size_t count,
                           const std::function<void(const std::string& line, int64_t number)>& answer) {
  const std::string name = str_cat(words_.what, " '", command_, "'");
  std::string output;
  int64_t first_line = 1;
  if (!persistent_) {
    std::string failure, write_error;
    {
      Process process(command_, words_.what);
      write_error = process.exchange(input, true, output, [](const std::string&) { return false; });
      failure = process.wait();
    }
    if (!failure.empty() || !write_error.empty())
      throw Error(str_cat(name, " ", failure.empty() ? "failed" : failure, " while ", words_.verb, " ", count, " ",
                          words_.items, write_error.empty() ? "" : "; " + write_error));
  } else {
    if (!server_) server_ = std::make_unique<Process>(command_, words_.what);
    output = std::move(leftover_);
    leftover_.clear();
    // What it wrote beyond the last batch's answers, or after: more lines than it was given.
    if (!output.empty())
      throw Error(str_cat(name, " wrote more than one line per ", words_.item, ": line ", lines_answered_ + 1,
                          " came after the ", lines_answered_, " ", words_.items, " it was given: ", output.substr(0, 200)));
    const std::string write_error =
        server_->exchange(input, false, output, [&](const std::string& text) { return count_lines(text) >= count; });
    if (!write_error.empty() || count_lines(output) < count) {
      // Its stdout closed: it exited (or closed it and will); otherwise it stopped reading.
      std::string ended = "stopped reading";
      if (!server_->output_open()) {
        ended = server_->wait();
        if (ended.empty()) ended = "exited";
      }
      const int64_t answered = int64_t(count_lines(output));
      server_.reset();
      throw Error(str_cat(name, " ", ended, " after answering ", lines_answered_ + answered, " lines (", answered,
                          " of the ", count, " ", words_.items, " of this batch)",
                          write_error.empty() ? "" : "; " + write_error));
    }
    // Exactly `count` lines are this batch's; anything after them is kept to be reported.
    size_t end = 0;
    for (size_t k = 0; k < count; ++k) end = output.find('\n', end) + 1;
    leftover_ = output.substr(end);
    output.resize(end);
    first_line = lines_answered_ + 1;
    lines_answered_ += int64_t(count);
  }
  // Exactly one line per input line.
  size_t start = 0, lines = 0;
  int64_t number = first_line - 1;
  while (start < output.size()) {
    size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    std::string line = output.substr(start, end - start);
    start = end + 1;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    ++number;
    if (lines == count)
      throw Error(str_cat(name, " wrote more than one line per ", words_.item, ": line ", number, " is beyond the ",
                          count, " ", words_.items, " it was given: ", line.substr(0, 200)));
    try {
      answer(line, number);
    } catch (const Error& error) {
      throw Error(str_cat(name, ": output line ", number, " ", error.what(), ": ", line.substr(0, 200)));
    }
    ++lines;
  }
  if (lines != count)
    throw Error(str_cat(name, " wrote ", lines, " lines for the ", count, " ", words_.items,
                        " it was given (one line per input line, in order)"));
}

}  // namespace lamina::train
