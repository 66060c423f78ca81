// Data parallelism on PyTorch's c10d process groups (Gloo between CPU processes, NCCL between GPUs):
// the process group comes from the launcher's environment (torchrun variables, else SLURM), ranks
// start from rank 0's parameters, and gradients are averaged across ranks in buckets after the
// local accumulation (not yet overlapped with backward). ZeroShards adds ZeRO-1 (optimizer state
// sharded) and ZeRO-2 (gradients reduce-scattered as well). World size 1 needs none of this.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace bonsai {

struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  std::string source = "single";  // "torchrun" | "slurm" | "single"
};

// torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, else SLURM_PROCID/SLURM_NTASKS/
// SLURM_LOCALID with the first host of SLURM_JOB_NODELIST and a port derived from SLURM_JOB_ID,
// else a single process. Malformed values throw naming the variable.
DistEnv dist_env_from_environment();
// "node[01-04,07],gpu5" -> "node01" (the first host of a SLURM node list).
std::string first_slurm_host(const std::string& nodelist);

class DataParallel {
 public:
  // Connects to the TCPStore at master_addr:master_port (rank 0 hosts it) and creates the process
  // group: NCCL when `device` is CUDA, Gloo otherwise. Collectives fail after `timeout`.
  DataParallel(const DistEnv& env, torch::Device device, std::chrono::milliseconds timeout);
  ~DataParallel();
  int rank() const { return env_.rank; }
  int world_size() const { return env_.world_size; }
  void broadcast_from_rank0(const std::vector<torch::Tensor>& tensors);
  void broadcast(const torch::Tensor& t, int root);
  // Averages gradients across ranks; buckets of about `bucket_bytes` are flattened and reduced together.
  void average_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes = 25 << 20);
  // The mean across ranks of a few scalars (for logging).
  std::vector<double> mean(const std::vector<double>& values);
  // Every rank's `values`, rank after rank (world_size * values.size() numbers).
  std::vector<double> gather_all(const std::vector<double>& values);
  // Sum across ranks of one number.
  double sum(double value);
  // `input` holds world_size equal chunks; `output` (one chunk) receives chunk `rank` summed over
  // ranks. NCCL runs a real reduce-scatter. Gloo has none: c10d's ProcessGroupGloo (torch 2.11)
  // implements _reduce_scatter_base as an allreduce of a full copy of `input` followed by keeping
  // this rank's chunk (its list form reduce_scatter also allreduces): the same result, no bandwidth
  // saving, and a transient copy of the bucket.
  void reduce_scatter_sum(torch::Tensor output, torch::Tensor input);
  // `output` (world_size chunks) receives every rank's `input`, rank after rank.
  void all_gather(torch::Tensor output, torch::Tensor input);
  void barrier();
  struct Impl;

 private:
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
};

// ZeRO over a flat view of the parameters: their concatenation (in the order given), zero-padded
// to a multiple of the world size W, is cut into W equal contiguous shards of S elements; rank r
// owns shard r: the Adam state of those elements and their update. The split is element-wise, so
// every rank holds 1/W of the optimizer state to within W-1 elements whatever the tensor sizes (a
// whole-tensor assignment would leave a large embedding on one rank). The optimizer sees `pieces()`,
// views into the parameters' own storage, one per parameter that meets the shard.
//   stage 1: gradients are all-reduced (every rank keeps the whole averaged gradient);
//   stage 2: gradients are reduce-scattered in buckets: each rank receives only the averaged
//            gradient of its shard (a flat buffer of S floats) and frees the parameters' full
//            gradients right after the reduction (the full ones still exist during backward:
//            gradients are not yet reduced bucket by bucket as backward produces them).
// After the optimizer step the updated shards are all-gathered into every rank's parameters.
class ZeroShards {
 public:
  struct Piece {
    size_t param;          // index into the parameter list
    int64_t offset, numel;  // elements [offset, offset + numel) of that parameter (flattened)
    int64_t shard_offset;   // where they start inside this rank's shard
    torch::Tensor value;    // a 1-D view of those elements, sharing the parameter's storage
  };
  // `params` must be contiguous and stay in place (their storage is viewed, never replaced).
  ZeroShards(DataParallel& dp, std::vector<torch::Tensor> params, int stage, int64_t bucket_bytes = 25 << 20);
  int stage() const { return stage_; }
  const std::vector<Piece>& pieces() const { return pieces_; }
  int64_t shard_numel() const { return shard_; }
  // After the local backward passes: averages gradients across ranks and points every piece's
  // .grad at the averaged gradient of its elements (stage 2: into the shard buffer, and every
  // parameter's .grad is released).
  void reduce_gradients();
  // The global L2 norm of the averaged gradient (fp64 accumulation, summed across ranks) and, when
  // it exceeds `max_norm` > 0, the owned gradient scaled down to it, as clip_grad_norm does.
  double clip_grad_norm(double max_norm);
  // After the optimizer step: every rank receives the other shards' updated values.
  void gather_parameters();
  // Drops the pieces' gradients and the shard buffer (after the step).
  void release_gradients();
  // Bytes of gradient this rank holds now: the parameters' .grad plus the shard buffer.
  int64_t gradient_bytes() const;
  // The parameter segments rank `rank` of a `world`-rank run owns under the same flattening (this
  // run's pieces are layout(world_size, rank)): for resharding optimizer state saved with another
  // world size.
  struct Segment {
    size_t param;
    int64_t offset, numel;
  };
  std::vector<Segment> layout(int64_t world, int64_t rank) const;

 private:
  // Calls f(param index, element offset in the param, offset in [begin, end), count) for every
  // parameter segment inside the flat range [begin, end); padding has none.
  template <class F>
  void for_segments(int64_t begin, int64_t end, F&& f) const;
  DataParallel& dp_;
  std::vector<torch::Tensor> params_;
  std::vector<int64_t> starts_;  // flat offset of each parameter
  std::vector<bool> has_grad_;
  int stage_;
  int64_t total_ = 0, shard_ = 0, bucket_ = 0;  // bucket_: elements per rank per collective
  std::vector<Piece> pieces_;
  torch::Tensor grad_shard_;
};

// Bytes held by the .grad of these tensors.
int64_t gradient_bytes(const std::vector<torch::Tensor>& params);

}  // namespace bonsai
