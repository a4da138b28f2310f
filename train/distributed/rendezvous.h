// Where this process sits in a distributed run, read from the environment the way the
// ecosystem's launchers write it, so that lamina ranks start under torchrun, SLURM's srun or
// `lamina launch` without flags of their own.
//
//   torchrun / lamina launch: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//   srun:                     SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID,
//                             SLURM_STEP_TASKS_PER_NODE (or SLURM_NTASKS_PER_NODE),
//                             SLURM_STEP_NODELIST (or SLURM_NODELIST); MASTER_ADDR and MASTER_PORT
//                             win when set, else the first host of the node list and port 29500
//   neither:                  one process, world size 1
//
// torchrun's variables win over SLURM's (torchrun started inside an allocation sets both). A
// value that is not a number, out of range, or contradicts another (RANK >= WORLD_SIZE) is an
// Error naming the variable: a rank that guessed would wait for peers that never come.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

namespace lamina::dist {

struct DistributedEnv {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;        // the rank among the processes on this machine (picks the GPU)
  int local_world_size = 1;  // how many ranks run on this machine
  std::string master_addr = "127.0.0.1";  // where rank 0 listens for the rendezvous
  int master_port = 29500;
  std::string source = "single";  // "torchrun", "slurm" or "single": which variables were read
};

constexpr int kDefaultMasterPort = 29500;

// Reads a variable: its value, or nullptr when unset. Tests pass a map instead of the process
// environment.
using EnvironmentLookup = std::function<const char*(const char* name)>;

DistributedEnv distributed_env_from_environment();
DistributedEnv distributed_env_from(const EnvironmentLookup& lookup);

// How long a rank waits for a peer (at the rendezvous, or for one byte during a collective)
// before failing: LAMINA_DIST_TIMEOUT_S seconds (fractions allowed), 300 s when unset.
std::chrono::milliseconds distributed_timeout();
std::chrono::milliseconds distributed_timeout_from(const EnvironmentLookup& lookup);

// SLURM's compressed host list spelled out: "node[01-03,7],gpu5" -> node01 node02 node03 node7
// gpu5 (zero padding kept as written; several bracket groups in one name multiply out).
// A malformed list is an Error quoting it.
std::vector<std::string> expand_slurm_hostlist(const std::string& hostlist);

// SLURM's tasks-per-node list spelled out per node: "2(x3),1" -> 2 2 2 1.
std::vector<int> expand_slurm_tasks_per_node(const std::string& text);

}  // namespace lamina::dist
