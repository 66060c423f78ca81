// Data parallelism on PyTorch's c10d process groups (Gloo between CPU processes, NCCL between GPUs):
// the process group comes from the launcher's environment (torchrun variables, else SLURM), ranks
// start from rank 0's parameters, and gradients are averaged across ranks in buckets after the
// local accumulation (not yet overlapped with backward). World size 1 needs none of this.
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
  void barrier();
  struct Impl;

 private:
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bonsai
