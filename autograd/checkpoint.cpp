#include "autograd/checkpoint.h"

#include "autograd/autograd.h"

namespace lamina::autograd {

std::vector<Tensor> checkpoint(const CheckpointFn& fn, const std::vector<Tensor>& inputs,
                               const std::vector<Tensor>& params, Generator* generator) {
  const Generator generator_at_start = generator != nullptr ? *generator : Generator();
  std::vector<Tensor> detached_inputs;
  for (const Tensor& input : inputs) detached_inputs.push_back(saved(input));
  std::vector<Tensor> outputs;
  {
    NoGradGuard no_grad;
    outputs = fn(detached_inputs);
  }
  std::vector<Tensor> node_inputs = inputs;
  node_inputs.insert(node_inputs.end(), params.begin(), params.end());
  std::vector<Tensor*> output_slots;
  for (Tensor& out : outputs) output_slots.push_back(&out);

  std::vector<bool> input_requires_grad;
  for (const Tensor& input : inputs) input_requires_grad.push_back(input.defined() && input.requires_grad());
  const size_t param_count = params.size();
  record("checkpoint", output_slots, node_inputs,
         [fn, detached_inputs, input_requires_grad, param_count, generator,
          generator_at_start](const std::vector<Tensor>& grad_outputs) {
           // Re-run with the random stream of the first run, then put the stream back.
           const Generator generator_now = generator != nullptr ? *generator : Generator();
           if (generator != nullptr) *generator = generator_at_start;
           std::vector<Tensor> fresh_inputs;
           for (size_t i = 0; i < detached_inputs.size(); ++i) {
             Tensor leaf = saved(detached_inputs[i]);
             if (input_requires_grad[i]) leaf.set_requires_grad(true);
             fresh_inputs.push_back(leaf);
           }
           std::vector<Tensor> recomputed;
           {
             EnableGradGuard enable_grad;
             recomputed = fn(fresh_inputs);
           }
           if (generator != nullptr) *generator = generator_now;
           LAMINA_CHECK(recomputed.size() == grad_outputs.size(), "checkpoint: the re-run returned ", recomputed.size(),
                        " outputs, the first run ", grad_outputs.size());
           std::vector<Tensor> roots, root_grads;
           for (size_t i = 0; i < recomputed.size(); ++i) {
             if (!recomputed[i].requires_grad()) continue;
             roots.push_back(recomputed[i]);
             root_grads.push_back(grad_outputs[i]);
           }
           if (!roots.empty()) backward(roots, root_grads);
           std::vector<Tensor> grads;
           for (const Tensor& leaf : fresh_inputs) grads.push_back(leaf.defined() ? leaf.grad() : Tensor());
           grads.resize(grads.size() + param_count);  // parameters received theirs during the re-run
           return grads;
         });
  return outputs;
}

}  // namespace lamina::autograd
