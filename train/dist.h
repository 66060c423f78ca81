// Data parallelism on PyTorch's c10d process groups (Gloo between CPU processes, NCCL between GPUs):
// the process group comes from the launcher's environment (torchrun variables, else SLURM), ranks
// start from rank 0's parameters, and gradients are averaged across ranks in buckets: after the
// local accumulation (DataParallel::average_gradients), or while the last backward pass still runs
// (GradientReducer: a bucket's all-reduce starts as soon as its last gradient is accumulated).
// ZeroShards adds ZeRO-1 (optimizer state sharded) and ZeRO-2 (gradients reduce-scattered as well).
// World size 1 needs none of this.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <mutex>
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
  // A sum all-reduce of `t` in place, started now and finished by wait() (which, like every
  // collective here, turns a timeout or a dead peer into one clear error naming `what`).
  class Pending {
   public:
    virtual ~Pending() = default;
    virtual void wait() = 0;
  };
  std::unique_ptr<Pending> start_allreduce_sum(torch::Tensor t, const std::string& what);
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

// Gradient averaging overlapped with backward, as torch DDP's reducer does it. The parameters are
// cut into buckets of about `bucket_bytes` in reverse order (backward produces the last layers'
// gradients first). A hook on each parameter's gradient accumulator counts the gradients of the
// armed backward pass; when a bucket is complete its all-reduce starts (asynchronously, on the
// process group's own threads or NCCL stream) while backward goes on. Buckets start in index order
// on every rank, so the collectives match across ranks whatever the order of the hooks.
//   arm()     before the last backward pass of the step (earlier micro-batches only accumulate);
//   finish()  after it: starts the buckets still waiting (a parameter that got no gradient counts
//             as zeros and keeps no gradient), waits for all, and points each .grad at its
//             averaged slice of the bucket.
// Memory: once a bucket starts, its parameters' .grad are released (the bucket holds them), so the
// gradient exists once, as without overlap; after finish() every .grad is a view into a bucket.
// The averages equal average_gradients' up to the order in which the ranks' values are summed
// (bit-identical with 2 ranks). A parameter must get a gradient on every rank or on none (a
// Llama's do); one that has none on this rank keeps none.
class GradientReducer {
 public:
  GradientReducer(DataParallel& dp, std::vector<torch::Tensor> params, int64_t bucket_bytes = 25 << 20);
  ~GradientReducer();  // removes the hooks
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;
  void arm();
  void finish();
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Of the last finish()'s buckets, how many had started before backward returned.
  int64_t started_during_backward() const { return started_early_; }

 private:
  struct Bucket {
    std::vector<size_t> params;
    int64_t waiting = 0;  // parameters of the armed pass not yet accumulated
    torch::Tensor flat;
    std::unique_ptr<DataParallel::Pending> pending;
  };
  void ready(size_t param);
  void start(size_t bucket);
  DataParallel& dp_;
  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<Bucket> buckets_;
  std::vector<char> seen_;
  std::vector<char> had_grad_;  // this rank had a gradient for the parameter when its bucket started
  std::vector<const void*> hooks_;  // ours, to remove only those
  std::mutex mu_;
  bool armed_ = false;
  size_t next_ = 0;  // buckets [0, next_) have started
  int64_t started_early_ = 0;
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
  // parameter's .grad is released). Stage 1 with `averaged`: a GradientReducer already averaged
  // the parameters' .grad; only the pieces are pointed at it.
  void reduce_gradients(bool averaged = false);
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
  int64_t bucket_bytes_;                      // stage 1: the all-reduce bucket size
  int64_t total_ = 0, shard_ = 0, bucket_ = 0;  // bucket_: elements per rank per collective (stage 2)
  std::vector<Piece> pieces_;
  torch::Tensor grad_shard_;
};

// Bytes held by the .grad of these tensors.
int64_t gradient_bytes(const std::vector<torch::Tensor>& params);

}  // namespace bonsai
