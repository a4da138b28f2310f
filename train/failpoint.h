// Failpoints: named places in the training and checkpoint code where a test makes lamina die
// (SIGKILL) or fail a write as a full disk does (ENOSPC), to show that a crash or a full disk
// there loses nothing (tests/tools/test_cli_faults.cpp runs the real binary with them). They are
// set by the environment and read at every hit, so an unset variable costs one getenv:
//
//   LAMINA_FAILPOINT="checkpoint.after-optimizer@4:kill,metrics.write@3:enospc"
//
// Each entry is NAME@STEP:ACTION; "@STEP" may be left out (every step); ACTION is `kill`
// (raise SIGKILL at once) or `enospc` (the next write fails with "No space left on device").
// STEP is the optimizer step the place belongs to: the step just taken, the step of the
// checkpoint being written (or whose writing prunes older ones), the final step for the model.
// An unknown name or a malformed entry is an error, so a typo never silently tests nothing.
//
//   train.after-step            an optimizer step is taken, its metrics line not yet written
//   metrics.write               writing the step's line to metrics.jsonl
//   checkpoint.after-model      the checkpoint's config.json and model.safetensors are written
//   checkpoint.after-optimizer  ... and optimizer.safetensors
//   checkpoint.after-state      ... and trainer.json; the COMPLETE marker not yet
//   checkpoint.before-rename    complete and synced, still under its step-N.partial-PID name
//   checkpoint.after-rename     renamed into place, older checkpoints not yet pruned
//   checkpoint.prune-renamed    an old checkpoint renamed to step-N.deleting-PID, not yet removed
//   checkpoint.prune-removing   that folder's model.safetensors removed, the rest not yet
//   model.before-swap           the final model written to model.partial-PID, not yet model/
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lamina::train {

// Does what LAMINA_FAILPOINT asks at the place `name` of `step`: nothing when it asks nothing
// here; never returns when it asks for a kill; throws the Error a failed write of `next_write`
// gives ("cannot write PATH: No space left on device") when it asks for enospc.
void failpoint(std::string_view name, int64_t step, const std::string& next_write);

}  // namespace lamina::train
