// `lamina launch`: starts N local ranks of a command, as torchrun does, for data-parallel training
// on one machine (`lamina launch --nproc 2 -- lamina train sft ...`). Each rank gets RANK,
// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT; its output comes back
// through pipes, a line at a time, prefixed with "[rank r] " for every rank but 0; the first rank
// that fails stops the others. The launcher is single-threaded (it never touches the tensor
// thread pool), which is what makes fork() followed by execve() safe here.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "tensor/error.h"
#include "tools/args.h"
#include "tools/commands.h"

extern char** environ;

namespace lamina::cli {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kCommand = "lamina launch";
constexpr const char* kHelpHint = "run 'lamina launch --help'";
constexpr int kMaxRanks = 512;            // two pipes per rank; far beyond the cores of one machine
constexpr size_t kLongestLine = 1 << 16;  // a longer line is passed on in pieces

[[noreturn]] void usage_error(const std::string& message) {
  throw UsageError(str_cat(kCommand, ": ", message), kHelpHint);
}

std::string signal_name(int signal_number) {
  switch (signal_number) {
    case SIGHUP: return "SIGHUP";
    case SIGINT: return "SIGINT";
    case SIGQUIT: return "SIGQUIT";
    case SIGILL: return "SIGILL";
    case SIGTRAP: return "SIGTRAP";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGKILL: return "SIGKILL";
    case SIGUSR1: return "SIGUSR1";
    case SIGSEGV: return "SIGSEGV";
    case SIGUSR2: return "SIGUSR2";
    case SIGPIPE: return "SIGPIPE";
    case SIGALRM: return "SIGALRM";
    case SIGTERM: return "SIGTERM";
    case SIGXCPU: return "SIGXCPU";
    case SIGXFSZ: return "SIGXFSZ";
    default: return "signal " + std::to_string(signal_number);
  }
}

// Writes all of `bytes` to `fd`, across partial writes and interrupted calls.
void write_all(int fd, const char* bytes, size_t size) {
  while (size > 0) {
    const ssize_t written = ::write(fd, bytes, size);
    if (written < 0 && errno == EINTR) continue;
    if (written <= 0) return;  // nowhere left to say it; the ranks' own status still decides the exit
    bytes += written;
    size -= size_t(written);
  }
}

void say(const std::string& message) {
  const std::string line = "launch: " + message + "\n";
  write_all(STDERR_FILENO, line.data(), line.size());
}

// The file `command` names: this executable for the word `lamina` (so ranks run the same build as
// the launcher, whatever PATH holds), the word itself when it holds a '/', else the first
// executable file of that name on PATH. Nothing found is a usage error naming the command.
std::string resolve_command(const std::string& command) {
  if (command == "lamina") return "/proc/self/exe";
  if (command.find('/') != std::string::npos) return command;  // execve's own error names what is wrong
  const char* path = std::getenv("PATH");
  const std::string search = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  for (size_t start = 0;;) {
    const size_t end = search.find(':', start);
    std::string candidate = search.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (candidate.empty()) candidate.push_back('.');  // an empty PATH entry is the current folder
    candidate.push_back('/');
    candidate += command;
    struct stat info {};
    if (::stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode) && ::access(candidate.c_str(), X_OK) == 0)
      return candidate;
    if (end == std::string::npos) break;
    start = end + 1;
  }
  usage_error("cannot execute '" + command + "': no executable of that name on PATH");
}

// A TCP port that is free now: the kernel's pick for a socket bound to port 0 (on every address,
// so the port is free on MASTER_ADDR too). Another process could take it before rank 0 listens
// on it, as with torchrun; --master-port avoids that.
int free_port() {
  const int socket_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  LAMINA_CHECK(socket_fd >= 0, "lamina launch: cannot open a socket to find a free port: ", std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_ANY);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool found = ::bind(socket_fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                     ::getsockname(socket_fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  const int error = errno;
  ::close(socket_fd);
  LAMINA_CHECK(found, "lamina launch: cannot find a free TCP port: ", std::strerror(error));
  return ntohs(address.sin_port);
}

// One child's output stream (its stdout or its stderr): what was read of its current line.
struct OutputStream {
  int read_fd = -1;      // -1 once it reached end of file
  int destination = -1;  // the launcher's stdout or stderr
  std::string pending;   // bytes after the last newline passed on
};

struct Rank {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  OutputStream streams[2];
};

class Launcher {
 public:
  Launcher(std::string executable, std::vector<std::string> arguments, std::string display_name, int world_size,
           std::string master_address, int master_port, double grace_seconds)
      : executable_(std::move(executable)),
        arguments_(std::move(arguments)),
        display_name_(std::move(display_name)),
        world_size_(world_size),
        master_address_(std::move(master_address)),
        master_port_(master_port),
        grace_seconds_(grace_seconds) {}

  // Never leaves a child behind, whatever ended the launch (an exception included).
  ~Launcher() {
    for (Rank& rank : ranks_)
      if (rank.running) ::kill(rank.pid, SIGKILL);
    for (Rank& rank : ranks_)
      if (rank.running) reap_blocking(rank);
    for (Rank& rank : ranks_)
      for (OutputStream& stream : rank.streams)
        if (stream.read_fd >= 0) ::close(stream.read_fd);
    if (signal_fd_ >= 0) {
      ::close(signal_fd_);
      ::sigprocmask(SIG_SETMASK, &original_mask_, nullptr);
    }
  }
  Launcher(const Launcher&) = delete;
  Launcher& operator=(const Launcher&) = delete;

  int run() {
    // SIGINT, SIGTERM and SIGCHLD arrive through a file descriptor, so one poll() waits for
    // output, exits and signals alike with no handler racing the loop. Each child restores
    // the original mask before exec.
    sigset_t handled;
    sigemptyset(&handled);
    sigaddset(&handled, SIGINT);
    sigaddset(&handled, SIGTERM);
    sigaddset(&handled, SIGCHLD);
    LAMINA_CHECK(::sigprocmask(SIG_BLOCK, &handled, &original_mask_) == 0, "lamina launch: sigprocmask failed");
    signal_fd_ = ::signalfd(-1, &handled, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signal_fd_ < 0) {
      const int error = errno;
      ::sigprocmask(SIG_SETMASK, &original_mask_, nullptr);
      throw Error(str_cat("lamina launch: signalfd failed: ", std::strerror(error)));
    }
    ranks_.reserve(size_t(world_size_));
    for (int rank = 0; rank < world_size_; ++rank) start(rank);
    supervise();
    return exit_status_;
  }

 private:
  std::vector<std::string> environment_for(int rank) const {
    static const std::set<std::string> kOwnNames = {"RANK",        "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                    "MASTER_ADDR", "MASTER_PORT"};
    std::vector<std::string> environment;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      const std::string text = *entry;
      if (kOwnNames.count(text.substr(0, text.find('='))) == 0) environment.push_back(text);
    }
    environment.push_back("RANK=" + std::to_string(rank));
    environment.push_back("WORLD_SIZE=" + std::to_string(world_size_));
    environment.push_back("LOCAL_RANK=" + std::to_string(rank));
    environment.push_back("LOCAL_WORLD_SIZE=" + std::to_string(world_size_));
    environment.push_back("MASTER_ADDR=" + master_address_);
    environment.push_back("MASTER_PORT=" + std::to_string(master_port_));
    return environment;
  }

  void start(int rank_index) {
    // Everything the child needs is made here: between fork() and execve() it only calls
    // async-signal-safe functions.
    const std::vector<std::string> environment = environment_for(rank_index);
    std::vector<char*> argv, envp;
    for (const std::string& argument : arguments_) argv.push_back(const_cast<char*>(argument.c_str()));
    argv.push_back(nullptr);
    for (const std::string& entry : environment) envp.push_back(const_cast<char*>(entry.c_str()));
    envp.push_back(nullptr);

    int output[2], errors[2], exec_status[2];
    LAMINA_CHECK(::pipe2(output, O_CLOEXEC) == 0, "lamina launch: pipe failed: ", std::strerror(errno));
    if (::pipe2(errors, O_CLOEXEC) != 0) {
      const int error = errno;
      ::close(output[0]);
      ::close(output[1]);
      throw Error(str_cat("lamina launch: pipe failed: ", std::strerror(error)));
    }
    // Carries execve's errno to the launcher; closed by a successful exec (O_CLOEXEC), so an end
    // of file means the command is running.
    if (::pipe2(exec_status, O_CLOEXEC) != 0) {
      const int error = errno;
      for (int fd : {output[0], output[1], errors[0], errors[1]}) ::close(fd);
      throw Error(str_cat("lamina launch: pipe failed: ", std::strerror(error)));
    }
    const pid_t launcher = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {
      // A launcher killed outright (SIGKILL, out of memory) takes its ranks with it.
      ::prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (::getppid() != launcher) ::_exit(1);  // it died before the line above took effect
      ::dup2(output[1], STDOUT_FILENO);
      ::dup2(errors[1], STDERR_FILENO);
      if (rank_index > 0) {  // only rank 0 reads the launcher's input
        const int null_input = ::open("/dev/null", O_RDONLY);
        if (null_input >= 0) ::dup2(null_input, STDIN_FILENO);
      }
      ::sigprocmask(SIG_SETMASK, &original_mask_, nullptr);
      ::execve(executable_.c_str(), argv.data(), envp.data());
      const int error = errno;
      (void)!::write(exec_status[1], &error, sizeof(error));
      ::_exit(127);
    }
    const int fork_error = errno;
    for (int fd : {output[1], errors[1], exec_status[1]}) ::close(fd);
    if (pid < 0) {
      for (int fd : {output[0], errors[0], exec_status[0]}) ::close(fd);
      throw Error(
          str_cat("lamina launch: cannot start rank ", rank_index, ": fork failed: ", std::strerror(fork_error)));
    }
    Rank& rank = ranks_.emplace_back();
    rank.rank = rank_index;
    rank.pid = pid;
    rank.running = true;
    rank.streams[0] = {output[0], STDOUT_FILENO, ""};
    rank.streams[1] = {errors[0], STDERR_FILENO, ""};

    int exec_error = 0;
    ssize_t got;
    do got = ::read(exec_status[0], &exec_error, sizeof(exec_error));
    while (got < 0 && errno == EINTR);
    ::close(exec_status[0]);
    if (got > 0) {
      reap_blocking(rank);  // the destructor stops the ranks started before it
      const std::string file = executable_ == display_name_ ? "" : " (" + executable_ + ")";
      usage_error("cannot execute '" + display_name_ + "'" + file + ": " + std::strerror(exec_error));
    }
  }

  void reap_blocking(Rank& rank) {
    int status = 0;
    while (::waitpid(rank.pid, &status, 0) < 0 && errno == EINTR) {
    }
    rank.running = false;
  }

  // Passes on what a stream has to say: whole lines, each in one write so that lines of
  // different ranks never mix; rank 0's bytes unchanged, every other rank's lines prefixed.
  // `flush_partial` passes on an unfinished last line too (at end of file, or rank 0's prompt
  // when it has gone quiet).
  void pass_on(const Rank& rank, OutputStream& stream, bool flush_partial) {
    const std::string prefix = rank.rank == 0 ? "" : "[rank " + std::to_string(rank.rank) + "] ";
    size_t start = 0;
    std::string out;
    for (size_t newline; (newline = stream.pending.find('\n', start)) != std::string::npos; start = newline + 1)
      out += prefix + stream.pending.substr(start, newline + 1 - start);
    stream.pending.erase(0, start);
    if (!stream.pending.empty() && (flush_partial || stream.pending.size() >= kLongestLine)) {
      // Rank 0's bytes stay exactly as written; another rank's piece ends its own line, or the
      // next rank's prefix would land in the middle of it.
      out += prefix + stream.pending + (rank.rank == 0 ? "" : "\n");
      stream.pending.clear();
    }
    if (!out.empty()) write_all(stream.destination, out.data(), out.size());
  }

  void read_from(Rank& rank, OutputStream& stream) {
    char buffer[1 << 16];
    const ssize_t got = ::read(stream.read_fd, buffer, sizeof(buffer));
    if (got < 0 && (errno == EINTR || errno == EAGAIN)) return;
    if (got <= 0) {
      ::close(stream.read_fd);
      stream.read_fd = -1;
      pass_on(rank, stream, true);
      return;
    }
    stream.pending.append(buffer, size_t(got));
    pass_on(rank, stream, false);
  }

  // Reads what an ended rank left in its pipes, so that its last words come before launch's.
  void drain(Rank& rank) {
    for (OutputStream& stream : rank.streams)
      while (stream.read_fd >= 0) {
        pollfd ready{stream.read_fd, POLLIN, 0};
        if (::poll(&ready, 1, 0) <= 0 || ready.revents == 0) break;  // something it started holds the pipe
        read_from(rank, stream);
      }
  }

  void signal_running(int signal_number) {
    for (Rank& rank : ranks_)
      if (rank.running) ::kill(rank.pid, signal_number);
  }

  void begin_stopping(int exit_status) {
    stopping_ = true;
    exit_status_ = exit_status;
    kill_deadline_ =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(grace_seconds_));
  }

  // Collects every child that has ended; the first failure stops the others.
  void reap_finished() {
    for (Rank& rank : ranks_) {
      if (!rank.running) continue;
      int status = 0;
      const pid_t done = ::waitpid(rank.pid, &status, WNOHANG);
      if (done != rank.pid) continue;
      rank.running = false;
      const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
      if (!failed || stopping_) continue;
      drain(rank);
      if (WIFEXITED(status)) {
        say(str_cat("rank ", rank.rank, " exited with status ", WEXITSTATUS(status), "; stopping the others"));
        begin_stopping(WEXITSTATUS(status));
      } else {
        say(str_cat("rank ", rank.rank, " was killed by ", signal_name(WTERMSIG(status)), "; stopping the others"));
        begin_stopping(128 + WTERMSIG(status));
      }
      signal_running(SIGTERM);
    }
  }

  void read_signals() {
    signalfd_siginfo info{};
    while (::read(signal_fd_, &info, sizeof(info)) == ssize_t(sizeof(info))) {
      const int signal_number = int(info.ssi_signo);
      if (signal_number == SIGCHLD) continue;  // every wake-up reaps
      if (stopping_) {
        // Asked again while stopping: no more waiting.
        say(str_cat("got ", signal_name(signal_number), " again; killing the ranks"));
        signal_running(SIGKILL);
        continue;
      }
      begin_stopping(128 + signal_number);
      // A Ctrl-C at the terminal (sent by the kernel to the whole foreground process group)
      // already reached the ranks, which share the launcher's group: a second copy could cut
      // short a rank's own clean shutdown.
      if (info.ssi_code == SI_KERNEL) {
        say(str_cat("got ", signal_name(signal_number), " from the terminal, as the ranks did; waiting for them"));
      } else {
        say(str_cat("got ", signal_name(signal_number), "; passing it to the ranks"));
        signal_running(signal_number);
      }
    }
  }

  bool any_running() const {
    for (const Rank& rank : ranks_)
      if (rank.running) return true;
    return false;
  }

  void supervise() {
    // Once every child has ended, its pipes close at once, unless something it started still
    // holds them: that is given a moment, not a wait forever.
    std::optional<Clock::time_point> drain_deadline;
    while (true) {
      reap_finished();
      const Clock::time_point now = Clock::now();
      if (stopping_ && now >= kill_deadline_ && any_running()) {
        for (const Rank& rank : ranks_)
          if (rank.running)
            say(str_cat("rank ", rank.rank, " did not stop within ", grace_seconds_, " s; sending SIGKILL"));
        signal_running(SIGKILL);
        kill_deadline_ = Clock::time_point::max();
      }
      std::vector<pollfd> watched{{signal_fd_, POLLIN, 0}};
      std::vector<std::pair<Rank*, OutputStream*>> sources;
      for (Rank& rank : ranks_)
        for (OutputStream& stream : rank.streams)
          if (stream.read_fd >= 0) {
            watched.push_back({stream.read_fd, POLLIN, 0});
            sources.emplace_back(&rank, &stream);
          }
      if (!any_running()) {
        if (!drain_deadline) drain_deadline = now + std::chrono::seconds(1);
        if (sources.empty() || now >= *drain_deadline) break;
      }
      // Wakes at least every 100 ms: to flush rank 0's unfinished line and to meet the deadlines.
      const int ready = ::poll(watched.data(), watched.size(), 100);
      if (ready < 0 && errno != EINTR) throw Error(str_cat("lamina launch: poll failed: ", std::strerror(errno)));
      if (ready == 0) {
        for (Rank& rank : ranks_)
          if (rank.rank == 0)
            for (OutputStream& stream : rank.streams) pass_on(rank, stream, true);
        continue;
      }
      if (ready < 0) continue;
      if (watched[0].revents != 0) read_signals();
      for (size_t i = 0; i < sources.size(); ++i)
        if (watched[i + 1].revents != 0) read_from(*sources[i].first, *sources[i].second);
    }
    for (Rank& rank : ranks_)
      for (OutputStream& stream : rank.streams) {
        pass_on(rank, stream, true);
        if (stream.read_fd >= 0) ::close(stream.read_fd);
        stream.read_fd = -1;
      }
  }

  const std::string executable_;
  const std::vector<std::string> arguments_;
  const std::string display_name_;
  const int world_size_;
  const std::string master_address_;
  const int master_port_;
  const double grace_seconds_;

  std::vector<Rank> ranks_;
  int signal_fd_ = -1;
  sigset_t original_mask_{};
  bool stopping_ = false;
  int exit_status_ = 0;
  Clock::time_point kill_deadline_ = Clock::time_point::max();
};

FlagParser launch_flags() {
  FlagParser parser(kCommand, "");
  parser.add_option("nproc", "N", "how many ranks to start (required)");
  parser.add_option("master-addr", "ADDRESS", "MASTER_ADDR for the ranks: where rank 0 listens", "127.0.0.1");
  parser.add_option("master-port", "PORT", "MASTER_PORT for the ranks", "a free port, picked at launch");
  parser.add_option("grace-seconds", "S", "how long ranks have to exit after SIGTERM before SIGKILL", "10");
  return parser;
}

void print_help() {
  const std::string flags = launch_flags().help_text();
  std::printf(
      "usage: lamina launch --nproc N [flags] -- COMMAND [ARGS...]\n\n"
      "Starts N ranks of COMMAND on this machine, with torchrun's environment: RANK and LOCAL_RANK\n"
      "(0 to N-1), WORLD_SIZE and LOCAL_WORLD_SIZE (N), MASTER_ADDR and MASTER_PORT. A COMMAND of\n"
      "'lamina' runs this same lamina executable; a COMMAND holding a '/' is that file; any other\n"
      "word is looked up on PATH. E.g.: lamina launch --nproc 2 -- lamina train sft ...\n\n"
      "Output: every rank's stdout and stderr go to launch's stdout and stderr, read through pipes a\n"
      "line at a time so lines of different ranks never mix; rank 0's lines are unchanged (its\n"
      "progress and JSON output stay clean), every other rank's lines start with \"[rank r] \".\n"
      "Rank 0 reads launch's stdin; the other ranks read /dev/null.\n\n"
      "Supervision: when a rank exits with a non-zero status or is killed by a signal, launch says\n"
      "so, sends SIGTERM to the other ranks, SIGKILL to those still running after --grace-seconds,\n"
      "and exits with the status of that first failing rank (128 + N for signal N). SIGINT or\n"
      "SIGTERM sent to launch goes on to the ranks (a Ctrl-C at the terminal reaches them directly;\n"
      "a second signal kills them) and launch exits with 128 + its number. When every rank exits 0,\n"
      "launch exits 0. A rank whose launcher dies gets SIGTERM, so none is left running. Signals go\n"
      "to the ranks' own processes: processes a rank starts are its own to stop. Usage mistakes (no\n"
      "--nproc, no '--', no command, a command that cannot be run) exit with status 2.\n\n%s",
      flags.substr(flags.find("flags:\n")).c_str());
}

}  // namespace

int run_launch(const Arguments& args) {
  // Flags before the first "--" are launch's; everything after it is the command, --help included.
  size_t separator = 0;
  while (separator < args.size() && args[separator] != "--") ++separator;
  const Arguments own(args.begin(), args.begin() + std::ptrdiff_t(separator));
  for (const std::string& argument : own)
    if (argument == "--help") {
      print_help();
      return 0;
    }
  if (separator == args.size()) usage_error("no '--' before the command: lamina launch --nproc N -- COMMAND [ARGS...]");
  FlagParser parser = launch_flags();
  parser.parse(own);
  if (!parser.is_set("nproc")) usage_error("--nproc is required: how many ranks to start");
  const int world_size = int(parser.int_value("nproc", 0, 1, kMaxRanks));
  const std::string master_address = parser.value("master-addr").value_or("127.0.0.1");
  const int given_port = int(parser.int_value("master-port", 0, 1, 65535));  // 0: not given
  const double grace_seconds = parser.double_value("grace-seconds", 10.0, 0.0, 86400.0);
  const Arguments command(args.begin() + std::ptrdiff_t(separator) + 1, args.end());
  if (command.empty()) usage_error("no command after '--'");
  if (command[0].empty()) usage_error("the command after '--' is an empty word");

  // A launcher started with stdin, stdout or stderr closed would hand those numbers to its pipes,
  // and a rank would then lose them at exec: /dev/null fills the gap.
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd)
    if (::fcntl(fd, F_GETFD) < 0 && errno == EBADF) ::open("/dev/null", fd == STDIN_FILENO ? O_RDONLY : O_WRONLY);

  const std::string executable = resolve_command(command[0]);
  std::vector<std::string> arguments = command;
  if (command[0] == "lamina") {
    // The ranks' argv[0] names the real file, as if started by its path.
    char self[4096];
    const ssize_t length = ::readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (length > 0) arguments[0] = std::string(self, size_t(length));
  }
  Launcher launcher(executable, arguments, command[0], world_size, master_address,
                    given_port != 0 ? given_port : free_port(), grace_seconds);
  return launcher.run();
}

}  // namespace lamina::cli
