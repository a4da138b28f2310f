// `lamina launch`: the environment every rank sees, its output (rank 0's untouched, the others'
// prefixed, whole lines never mixed, stdout and stderr kept apart) and its stdin; a failing rank
// stopping the others within seconds, SIGKILL after the grace period; SIGTERM passed on; a
// launcher killed outright taking its ranks with it; usage mistakes refused with status 2.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "scratch_dir.h"
#include "tools/cli_runner.h"

using namespace lamina::testing;

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

bool has_line(const std::string& output, const std::string& line) {
  for (const std::string& candidate : lines_of(output))
    if (candidate == line) return true;
  return false;
}

bool ends_with(const std::string& text, const std::string& end) {
  return text.size() >= end.size() && text.compare(text.size() - end.size(), end.size(), end) == 0;
}

// What a shell command printed on stdout alone (its stderr thrown away).
std::string stdout_of(const std::string& command) {
  std::FILE* pipe = popen((command + " 2>/dev/null").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string output;
  char buffer[4096];
  for (size_t read; (read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, read);
  pclose(pipe);
  return output;
}

// The process id a rank wrote to `path` (0 when it wrote none).
pid_t pid_in(const std::string& path) {
  std::ifstream in(path);
  long pid = 0;
  in >> pid;
  return pid_t(pid);
}

// Whether a process has ended: gone, or a zombie not yet collected (the ranks of a launcher that
// was killed outright are left to whichever ancestor adopts them).
bool has_ended(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  const std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const size_t name_end = text.rfind(')');
  if (name_end == std::string::npos || name_end + 2 >= text.size()) return true;
  const char state = text[name_end + 2];
  return state == 'Z' || state == 'X';
}

// Waits up to `seconds` for the process to end.
bool ends_within(pid_t pid, double seconds) {
  const Clock::time_point start = Clock::now();
  while (!has_ended(pid)) {
    if (seconds_since(start) > seconds) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}

// A shell snippet for a rank: write its own process id to DIR/pidRANK (whole, by rename).
std::string write_own_pid(const std::string& folder) {
  return "echo $$ > " + folder + "/tmp$RANK && mv " + folder + "/tmp$RANK " + folder + "/pid$RANK";
}

}  // namespace

TEST_CASE("lamina launch gives every rank its own environment and prefixes the other ranks' lines") {
  // Values already in the launcher's environment are replaced, not inherited.
  const Run run = run_lamina(
      "launch --nproc 3 -- sh -c "
      "'echo \"env $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT\"; echo \"err $RANK\" "
      ">&2'",
      {.environment = "RANK=7 WORLD_SIZE=9 MASTER_PORT=1", .timeout_seconds = 30});
  INFO(run.output);
  REQUIRE(run.status == 0);
  // Rank 0's line carries no prefix; its port is the one every rank got.
  std::string port;
  for (const std::string& line : lines_of(run.output))
    if (line.rfind("env 0 3 0 3 127.0.0.1 ", 0) == 0) port = line.substr(std::string("env 0 3 0 3 127.0.0.1 ").size());
  REQUIRE(!port.empty());
  CHECK(std::stoi(port) > 1);
  CHECK(std::stoi(port) <= 65535);
  CHECK(has_line(run.output, "[rank 1] env 1 3 1 3 127.0.0.1 " + port));
  CHECK(has_line(run.output, "[rank 2] env 2 3 2 3 127.0.0.1 " + port));
  CHECK(has_line(run.output, "err 0"));
  CHECK(has_line(run.output, "[rank 1] err 1"));
  CHECK(has_line(run.output, "[rank 2] err 2"));
  CHECK(lines_of(run.output).size() == 6);
  CHECK(run.output.find("[rank 0]") == std::string::npos);

  // The given address and port; stdout and stderr stay apart.
  const std::string standard_output =
      stdout_of(std::string(LAMINA_CLI_PATH) +
                " launch --nproc 2 --master-addr 127.0.0.2 --master-port 29511 -- sh -c "
                "'echo \"env $RANK $MASTER_ADDR $MASTER_PORT\"; echo \"err $RANK\" >&2'");
  CHECK(has_line(standard_output, "env 0 127.0.0.2 29511"));
  CHECK(has_line(standard_output, "[rank 1] env 1 127.0.0.2 29511"));
  CHECK(standard_output.find("err") == std::string::npos);
}

TEST_CASE("lamina launch: rank 0 reads stdin, the others /dev/null; 'lamina' is this executable") {
  const Run read = run_lamina("launch --nproc 2 -- sh -c 'read line; echo \"read:$line\"'",
                              {.input = std::string("hello\n"), .timeout_seconds = 30});
  INFO(read.output);
  CHECK(read.status == 0);
  CHECK(has_line(read.output, "read:hello"));
  CHECK(has_line(read.output, "[rank 1] read:"));

  const Run version = run_lamina("version", {.timeout_seconds = 30});
  const Run ranks =
      run_lamina("launch --nproc 2 -- lamina version", {.environment = "PATH=/bin:/usr/bin", .timeout_seconds = 30});
  INFO(ranks.output);
  CHECK(ranks.status == 0);
  REQUIRE(!version.output.empty());
  CHECK(ranks.output.find(version.output) != std::string::npos);
  CHECK(ranks.output.find("[rank 1] " + version.output) != std::string::npos);
}

TEST_CASE("lamina launch passes on whole lines, rank 0's bytes unchanged") {
  // Three ranks racing to print 300 lines each: every line arrives whole, once, in its rank's order.
  const Run run =
      run_lamina("launch --nproc 3 -- sh -c 'i=0; while [ $i -lt 300 ]; do echo \"line $RANK $i\"; i=$((i+1)); done'",
                 {.timeout_seconds = 30});
  REQUIRE(run.status == 0);
  int next[3] = {0, 0, 0};
  for (const std::string& line : lines_of(run.output)) {
    int rank = 0;
    std::string rest = line;
    if (line.rfind("[rank ", 0) == 0) {
      rank = line[6] - '0';
      rest = line.substr(9);
      REQUIRE(line.substr(7, 2) == "] ");
      REQUIRE((rank == 1 || rank == 2));
    }
    REQUIRE(rest == "line " + std::to_string(rank) + " " + std::to_string(next[rank]));
    ++next[rank];
  }
  CHECK(next[0] == 300);
  CHECK(next[1] == 300);
  CHECK(next[2] == 300);

  // An unfinished last line: rank 0's exactly as written, another rank's ended so that it
  // cannot run into the next one.
  const Run partial = run_lamina("launch --nproc 1 -- printf 'a\\nb'", {.timeout_seconds = 30});
  CHECK(partial.status == 0);
  CHECK(partial.output == "a\nb");
  const Run other = run_lamina("launch --nproc 2 -- sh -c '[ $RANK = 0 ] || printf partial'", {.timeout_seconds = 30});
  CHECK(other.status == 0);
  CHECK(other.output == "[rank 1] partial\n");
}

TEST_CASE("lamina launch: a failing rank stops the others within seconds and sets the exit status") {
  const ScratchDir scratch("cli-launch-fail");
  const std::string folder = scratch.path.string();
  // Ranks 0 and 2 sleep for a minute; rank 1 exits 3 once both have written their process ids.
  const Clock::time_point start = Clock::now();
  const Run run =
      run_lamina("launch --nproc 3 -- sh -c 'if [ $RANK = 1 ]; then while [ ! -s " + folder + "/pid0 ] || [ ! -s " +
                     folder + "/pid2 ]; do sleep 0.02; done; echo last words >&2; exit 3; fi; " +
                     write_own_pid(folder) + "; exec sleep 60'",
                 {.timeout_seconds = 30});
  const double elapsed = seconds_since(start);
  INFO(run.output);
  CHECK(run.status == 3);
  CHECK(elapsed < 5.0);
  // The rank's own last words come before launch's verdict.
  CHECK(run.output.find("[rank 1] last words\nlaunch: rank 1 exited with status 3; stopping the others\n") !=
        std::string::npos);
  const pid_t first = pid_in(scratch / "pid0"), third = pid_in(scratch / "pid2");
  REQUIRE(first > 0);
  REQUIRE(third > 0);
  CHECK(has_ended(first));
  CHECK(has_ended(third));
}

TEST_CASE("lamina launch: a rank that ignores SIGTERM gets SIGKILL after --grace-seconds") {
  const ScratchDir scratch("cli-launch-grace");
  const std::string folder = scratch.path.string();
  // Every rank ignores SIGTERM (an ignored signal stays ignored across exec); rank 1 kills itself.
  const Clock::time_point start = Clock::now();
  const Run run = run_lamina(
      "launch --nproc 2 --grace-seconds 1 -- sh -c 'trap \"\" TERM; if [ $RANK = 1 ]; then while [ ! -s " + folder +
          "/pid0 ]; do sleep 0.02; done; kill -KILL $$; fi; " + write_own_pid(folder) + "; exec sleep 60'",
      {.timeout_seconds = 30});
  const double elapsed = seconds_since(start);
  INFO(run.output);
  CHECK(run.status == 128 + SIGKILL);
  CHECK(run.output.find("launch: rank 1 was killed by SIGKILL; stopping the others") != std::string::npos);
  CHECK(run.output.find("launch: rank 0 did not stop within 1 s; sending SIGKILL") != std::string::npos);
  CHECK(elapsed >= 1.0);
  CHECK(elapsed < 6.0);
  const pid_t sleeper = pid_in(scratch / "pid0");
  REQUIRE(sleeper > 0);
  CHECK(has_ended(sleeper));
}

TEST_CASE("lamina launch passes SIGTERM on, and a launcher killed outright takes its ranks with it") {
  const ScratchDir scratch("cli-launch-signals");
  const std::string folder = scratch.path.string();
  for (const char* signal_word : {"TERM", "KILL"}) {
    const std::string signal = signal_word;
    CAPTURE(signal);
    std::filesystem::remove_all(scratch.path);
    std::filesystem::create_directories(scratch.path);
    // The launcher runs in the background of a script that signals it once both ranks run.
    std::ofstream(scratch / "script.sh")
        << std::string(LAMINA_CLI_PATH) << " launch --nproc 2 -- sh -c '" << write_own_pid(folder)
        << "; exec sleep 60' > " << folder << "/output 2>&1 &\n"
        << "launcher=$!\n"
        << "tries=0\n"
        << "while [ ! -s " << folder << "/pid0 ] || [ ! -s " << folder
        << "/pid1 ]; do sleep 0.02; tries=$((tries+1)); [ $tries -lt 500 ] || break; done\n"
        << "kill -" << signal << " $launcher\n"
        << "wait $launcher\n"
        << "echo \"status $?\"\n";
    const Clock::time_point start = Clock::now();
    const Run run = [&] {
      Run result;
      std::FILE* pipe = popen(("timeout 30 sh " + (scratch / "script.sh") + " 2>&1").c_str(), "r");
      REQUIRE(pipe != nullptr);
      char buffer[4096];
      for (size_t read; (read = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0;) result.output.append(buffer, read);
      result.status = pclose(pipe);
      return result;
    }();
    const double elapsed = seconds_since(start);
    const std::string launcher_output = file_bytes(scratch.path / "output");
    INFO(run.output);
    INFO(launcher_output);
    CHECK(run.status == 0);
    const pid_t first = pid_in(scratch / "pid0"), second = pid_in(scratch / "pid1");
    REQUIRE(first > 0);
    REQUIRE(second > 0);
    if (signal == "TERM") {
      // The ranks stopped on the SIGTERM passed to them, well before --grace-seconds' 10 s.
      CHECK(ends_with(run.output, "status 143\n"));
      CHECK(elapsed < 5.0);
      CHECK(launcher_output.find("launch: got SIGTERM; passing it to the ranks") != std::string::npos);
      CHECK(has_ended(first));
      CHECK(has_ended(second));
    } else {
      // Nobody is left to wait for them: their parent-death signal ends them soon after.
      CHECK(ends_with(run.output, "status 137\n"));  // the shell may say "Killed" first
      CHECK(ends_within(first, 5.0));
      CHECK(ends_within(second, 5.0));
    }
  }
}

TEST_CASE("lamina launch refuses usage mistakes with status 2 and explains itself in --help") {
  const std::vector<std::pair<std::string, std::string>> mistakes = {
      {"launch -- true", "--nproc is required"},
      {"launch --nproc 0 -- true", "flag --nproc must be in [1, 512], got 0"},
      {"launch --nproc -2 -- true", "flag --nproc must be in [1, 512], got -2"},
      {"launch --nproc two -- true", "flag --nproc needs an integer, got 'two'"},
      {"launch --nproc 2 true", "no '--' before the command"},
      {"launch --nproc 2", "no '--' before the command"},
      {"launch --nproc 2 --", "no command after '--'"},
      {"launch --nproc 2 -- ''", "the command after '--' is an empty word"},
      {"launch --nproc 2 -- no-such-command-for-lamina",
       "cannot execute 'no-such-command-for-lamina': no executable of that name on PATH"},
      {"launch --nproc 2 -- /no/such/file", "cannot execute '/no/such/file': No such file or directory"},
      {"launch --nproc 2 -- /dev/null", "cannot execute '/dev/null': Permission denied"},
      {"launch --nproc 2 --grace-seconds -1 -- true", "flag --grace-seconds must be in [0, 86400], got -1"},
      {"launch --nproc 2 --master-port 0 -- true", "flag --master-port must be in [1, 65535], got 0"},
      {"launch --nprocs 2 -- true", "unknown flag '--nprocs' (did you mean --nproc?)"},
  };
  for (const auto& [arguments, message] : mistakes) {
    const Run run = run_lamina(arguments, {.timeout_seconds = 30});
    INFO(arguments);
    INFO(run.output);
    CHECK(run.status == 2);
    CHECK(run.output.find("error: lamina launch: " + message) != std::string::npos);
  }

  const Run help = run_lamina("launch --help");
  CHECK(help.status == 0);
  for (const char* part : {"usage: lamina launch --nproc N [flags] -- COMMAND [ARGS...]", "RANK", "WORLD_SIZE",
                           "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "\"[rank r] \"", "/dev/null",
                           "--grace-seconds S", "SIGKILL", "--master-port PORT", "--master-addr ADDRESS", "status 2"})
    CHECK_MESSAGE(help.output.find(part) != std::string::npos, part);
  // A --help after '--' is the command's.
  const Run command_help = run_lamina("launch --nproc 1 -- lamina version --help", {.timeout_seconds = 30});
  CHECK(command_help.output.find("usage: lamina launch") == std::string::npos);
  CHECK(run_lamina("help").output.find("launch") != std::string::npos);
}
