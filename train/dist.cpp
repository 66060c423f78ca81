#include "train/dist.h"

// The PyPI torch wheel exports c10d's Gloo backend but ships none of gloo's headers, which
// ProcessGroupGloo.hpp includes; Debian's libgloo-dev provides them (scripts/setup.sh). This file
// only constructs the process group and its Options: their layout is c10d's own (pointers and std
// containers), so the older gloo declarations do not change what is built here.

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <functional>

#include "core/error.h"

namespace bonsai {
namespace {

int env_int(const char* name, int def, bool* found = nullptr) {
  const char* v = std::getenv(name);
  if (found) *found = v != nullptr;
  if (v == nullptr) return def;
  try {
    size_t used = 0;
    int x = std::stoi(v, &used);
    if (used != std::string(v).size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    throw Error(std::string("environment variable ") + name + "='" + v + "' is not an integer");
  }
}

// Runs a collective and turns a timeout or a peer's death into one clear error.
template <class F>
void collective(const DistEnv& env, const std::string& what, F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world_size) + ": " + what +
                    " failed: " + std::string(e.what()).substr(0, 300),
                "another rank died or hangs (see its log); the last checkpoint is intact, resume with --resume");
  }
}

}  // namespace

std::string first_slurm_host(const std::string& list) {
  std::string first = list.substr(0, list.find(','));
  auto lb = list.find('[');
  if (lb == std::string::npos || lb > list.find(',')) return first;
  // "prefix[01-04,07]..." -> prefix + first number of the range, keeping its zero padding
  std::string prefix = list.substr(0, lb);
  size_t end = list.find_first_of("-,]", lb + 1);
  return prefix + list.substr(lb + 1, end - lb - 1);
}

DistEnv dist_env_from_environment() {
  DistEnv e;
  bool has_rank = false, has_slurm = false;
  e.rank = env_int("RANK", 0, &has_rank);
  if (has_rank) {
    e.world_size = env_int("WORLD_SIZE", 1);
    e.local_rank = env_int("LOCAL_RANK", 0);
    if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
    e.master_port = env_int("MASTER_PORT", 29500);
    e.source = "torchrun";
  } else {
    e.rank = env_int("SLURM_PROCID", 0, &has_slurm);
    if (has_slurm) {
      e.world_size = env_int("SLURM_NTASKS", 1);
      e.local_rank = env_int("SLURM_LOCALID", 0);
      const char* nodes = std::getenv("SLURM_JOB_NODELIST");
      if (const char* a = std::getenv("MASTER_ADDR")) e.master_addr = a;
      else if (nodes) e.master_addr = first_slurm_host(nodes);
      e.master_port = env_int("MASTER_PORT", 20000 + env_int("SLURM_JOB_ID", 0) % 20000);
      e.source = "slurm";
    }
  }
  if (e.world_size < 1 || e.rank < 0 || e.rank >= e.world_size)
    throw Error("distributed environment: rank " + std::to_string(e.rank) + " is outside world size " +
                std::to_string(e.world_size) + " (from " + e.source + " variables)");
  return e;
}

struct DataParallel::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> pg;
  torch::Device device{torch::kCPU};  // NCCL collectives take tensors on this rank's GPU
};

DataParallel::DataParallel(const DistEnv& env, torch::Device device, std::chrono::milliseconds timeout)
    : env_(env), impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  c10d::TCPStoreOptions so;
  so.port = static_cast<uint16_t>(env.master_port);
  so.isServer = env.rank == 0;
  so.numWorkers = env.world_size;
  so.timeout = timeout;
  collective(env, "rendezvous at " + env.master_addr + ":" + std::to_string(env.master_port), [&] {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, so);
  });
  if (device.is_cuda()) {
#ifdef USE_C10D_NCCL
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world_size, opts);
#else
    throw Error("this build has no NCCL support", "rebuild against a CUDA LibTorch");
#endif
  } else {
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    const bool loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
    opts->devices.push_back(loopback ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                     : c10d::ProcessGroupGloo::createDefaultDevice());
    collective(env, "creating the Gloo process group", [&] {
      impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank, env.world_size, opts);
    });
  }
}

DataParallel::~DataParallel() {
  // NCCL wants an explicit end (else "destroy_process_group() was not called" at exit): a normal
  // exit shuts the communicators down; unwinding from an error (a peer may be dead, a collective
  // may never finish) aborts them instead of waiting.
  if (!impl_ || !impl_->pg) return;
  try {
    if (std::uncaught_exceptions() > 0) impl_->pg->abort();
    else impl_->pg->shutdown();
  } catch (...) {
  }
}

void DataParallel::broadcast_from_rank0(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard ng;
  for (const auto& t : tensors) {
    std::vector<at::Tensor> v{t.data()};
    collective(env_, "broadcasting parameters", [&] { impl_->pg->broadcast(v, c10d::BroadcastOptions{})->wait(); });
  }
}

void DataParallel::broadcast(const torch::Tensor& t, int root) {
  torch::NoGradGuard ng;
  std::vector<at::Tensor> v{t.data()};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  collective(env_, "broadcasting from rank " + std::to_string(root), [&] { impl_->pg->broadcast(v, o)->wait(); });
}

void DataParallel::average_gradients(const std::vector<torch::Tensor>& params, int64_t bucket_bytes) {
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> bucket;
  int64_t bytes = 0;
  auto flush = [&] {
    if (bucket.empty()) return;
    std::vector<torch::Tensor> flat_views;
    for (auto& g : bucket) flat_views.push_back(g.reshape(-1));
    std::vector<at::Tensor> flat{torch::cat(flat_views)};
    collective(env_, "averaging gradients", [&] { impl_->pg->allreduce(flat, c10d::AllreduceOptions{})->wait(); });
    flat[0].div_(env_.world_size);
    int64_t off = 0;
    for (auto& g : bucket) {
      g.copy_(flat[0].narrow(0, off, g.numel()).view_as(g));
      off += g.numel();
    }
    bucket.clear();
    bytes = 0;
  };
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    bucket.push_back(p.grad());
    bytes += p.grad().nbytes();
    if (bytes >= bucket_bytes) flush();
  }
  flush();
}

namespace {
class PendingWork : public DataParallel::Pending {
 public:
  PendingWork(const DistEnv& env, std::string what, c10::intrusive_ptr<c10d::Work> work)
      : env_(env), what_(std::move(what)), work_(std::move(work)) {}
  void wait() override {
    if (!work_) return;
    auto w = std::move(work_);
    collective(env_, what_, [&] { w->wait(); });
  }

 private:
  DistEnv env_;
  std::string what_;
  c10::intrusive_ptr<c10d::Work> work_;
};
}  // namespace

std::unique_ptr<DataParallel::Pending> DataParallel::start_allreduce_sum(torch::Tensor t, const std::string& what) {
  std::vector<at::Tensor> v{std::move(t)};
  c10::intrusive_ptr<c10d::Work> work;
  collective(env_, what, [&] { work = impl_->pg->allreduce(v, c10d::AllreduceOptions{}); });
  return std::make_unique<PendingWork>(env_, what, std::move(work));
}

// ---- GradientReducer

namespace {
struct AccumulatedHook : torch::autograd::PostAccumulateGradHook {
  std::function<void()> fn;
  explicit AccumulatedHook(std::function<void()> f) : fn(std::move(f)) {}
  void operator()(const torch::autograd::Variable&) override { fn(); }
};
}  // namespace

GradientReducer::GradientReducer(DataParallel& dp, std::vector<torch::Tensor> params, int64_t bucket_bytes)
    : dp_(dp), params_(std::move(params)) {
  bucket_of_.assign(params_.size(), 0);
  int64_t bytes = 0;
  for (size_t k = params_.size(); k-- > 0;) {  // reverse: the order backward finishes them, roughly
    const auto& p = params_[k];
    if (!p.requires_grad()) throw Error("GradientReducer: parameter " + std::to_string(k) + " does not require grad");
    if (buckets_.empty() || bytes >= bucket_bytes) {
      buckets_.emplace_back();
      bytes = 0;
    }
    buckets_.back().params.push_back(k);
    bucket_of_[k] = buckets_.size() - 1;
    bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  seen_.assign(params_.size(), 0);
  had_grad_.assign(params_.size(), 0);
  for (size_t k = 0; k < params_.size(); ++k) {
    if (torch::autograd::impl::post_acc_grad_hooks(params_[k]))
      throw Error("GradientReducer: parameter " + std::to_string(k) + " already has a post-accumulate-grad hook",
                  "one reducer per set of parameters");
  }
  for (size_t k = 0; k < params_.size(); ++k) {
    auto hook = std::make_unique<AccumulatedHook>([this, k] { ready(k); });
    hooks_.push_back(hook.get());
    torch::autograd::impl::set_post_acc_grad_hooks(params_[k], std::move(hook));
  }
}

GradientReducer::~GradientReducer() {
  for (size_t k = 0; k < params_.size(); ++k) {
    auto& slot = torch::autograd::impl::post_acc_grad_hooks(params_[k]);
    if (slot.get() == hooks_[k]) torch::autograd::impl::set_post_acc_grad_hooks(params_[k], nullptr);
  }
  // A step abandoned by an error: the collectives still queued are dropped, not waited for (each
  // wait could take dist.timeout_s with a hung peer); their Work objects keep the buffers alive,
  // and ~DataParallel aborts the communicators.
  for (auto& b : buckets_) b.pending.reset();
}

void GradientReducer::arm() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& b : buckets_) {
    b.waiting = static_cast<int64_t>(b.params.size());
    b.flat = torch::Tensor();
    b.pending.reset();
  }
  std::fill(seen_.begin(), seen_.end(), 0);
  next_ = 0;
  started_early_ = 0;
  armed_ = true;
}

void GradientReducer::ready(size_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!armed_ || seen_[k]) return;
  seen_[k] = 1;
  --buckets_[bucket_of_[k]].waiting;
  while (next_ < buckets_.size() && buckets_[next_].waiting == 0) {
    start(next_++);
    ++started_early_;
  }
}

void GradientReducer::start(size_t bi) {
  torch::NoGradGuard ng;
  Bucket& b = buckets_[bi];
  std::vector<torch::Tensor> parts;
  parts.reserve(b.params.size());
  for (size_t k : b.params) {
    auto& p = params_[k];
    had_grad_[k] = p.grad().defined();
    parts.push_back(had_grad_[k] ? p.grad().reshape(-1) : torch::zeros({p.numel()}, p.options()));
  }
  b.flat = torch::cat(parts);
  parts.clear();
  // The bucket holds the gradients now: release the parameters' own (this backward pass is done
  // with them), so the overlap costs no second copy of the gradient; finish() points each .grad
  // at its averaged slice of the bucket.
  for (size_t k : b.params) params_[k].mutable_grad() = torch::Tensor();
  b.pending = dp_.start_allreduce_sum(b.flat, "averaging gradients");
}

void GradientReducer::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!armed_) throw Error("GradientReducer::finish() without arm()");
    armed_ = false;
    while (next_ < buckets_.size()) start(next_++);
  }
  torch::NoGradGuard ng;
  const double W = dp_.world_size();
  for (auto& b : buckets_) {
    b.pending->wait();
    b.pending.reset();
    b.flat.div_(W);
    int64_t off = 0;
    for (size_t k : b.params) {
      auto& p = params_[k];
      const int64_t n = p.numel();
      if (had_grad_[k]) p.mutable_grad() = b.flat.narrow(0, off, n).view_as(p);  // a view: no copy
      off += n;
    }
    b.flat = torch::Tensor();  // the .grad views keep the bucket's storage
  }
}

std::vector<double> DataParallel::mean(const std::vector<double>& values) {
  std::vector<at::Tensor> t{torch::tensor(values, torch::kDouble).to(impl_->device)};
  collective(env_, "averaging metrics", [&] { impl_->pg->allreduce(t, c10d::AllreduceOptions{})->wait(); });
  torch::Tensor r = t[0].cpu().div_(env_.world_size);
  return std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + values.size());
}

std::vector<double> DataParallel::gather_all(const std::vector<double>& values) {
  // An allreduce of a W x n table where each rank fills its own row: a few numbers, no need for
  // Gloo's allgather.
  const int64_t n = static_cast<int64_t>(values.size());
  torch::Tensor table = torch::zeros({env_.world_size * n}, torch::kDouble);
  table.narrow(0, env_.rank * n, n).copy_(torch::tensor(values, torch::kDouble));
  std::vector<at::Tensor> t{table.to(impl_->device)};
  collective(env_, "gathering metrics", [&] { impl_->pg->allreduce(t, c10d::AllreduceOptions{})->wait(); });
  torch::Tensor r = t[0].cpu();
  return std::vector<double>(r.data_ptr<double>(), r.data_ptr<double>() + r.numel());
}

double DataParallel::sum(double value) {
  std::vector<at::Tensor> t{torch::tensor({value}, torch::kDouble).to(impl_->device)};
  collective(env_, "summing the gradient norm", [&] { impl_->pg->allreduce(t, c10d::AllreduceOptions{})->wait(); });
  return t[0].item<double>();
}

void DataParallel::reduce_scatter_sum(torch::Tensor output, torch::Tensor input) {
  // NCCL: a real reduce-scatter (each rank sends and receives (W-1)/W of `input`). Gloo: see the
  // header; ProcessGroupGloo::_reduce_scatter_base is an allreduce of a copy, then this rank's chunk.
  collective(env_, "reduce-scattering gradients", [&] { impl_->pg->_reduce_scatter_base(output, input)->wait(); });
}

void DataParallel::all_gather(torch::Tensor output, torch::Tensor input) {
  collective(env_, "all-gathering parameters", [&] { impl_->pg->_allgather_base(output, input)->wait(); });
}

void DataParallel::barrier() {
  std::vector<at::Tensor> t{torch::zeros({1}, torch::TensorOptions().device(impl_->device))};
  collective(env_, "barrier", [&] { impl_->pg->allreduce(t, c10d::AllreduceOptions{})->wait(); });
}

int64_t gradient_bytes(const std::vector<torch::Tensor>& params) {
  int64_t b = 0;
  for (const auto& p : params)
    if (p.grad().defined()) b += p.grad().nbytes();
  return b;
}

ZeroShards::ZeroShards(DataParallel& dp, std::vector<torch::Tensor> params, int stage, int64_t bucket_bytes)
    : dp_(dp), params_(std::move(params)), stage_(stage), bucket_bytes_(bucket_bytes) {
  if (stage != 1 && stage != 2) throw Error("ZeRO stage must be 1 or 2, got " + std::to_string(stage));
  const int64_t W = dp.world_size();
  for (const auto& p : params_) {
    if (!p.is_contiguous()) throw Error("ZeRO needs contiguous parameters");
    starts_.push_back(total_);
    total_ += p.numel();
  }
  shard_ = (total_ + W - 1) / W;
  const int64_t elem = params_.empty() ? 4 : params_[0].element_size();
  bucket_ = std::max<int64_t>(1, bucket_bytes / (elem * W));
  const int64_t begin = dp.rank() * shard_;
  for_segments(begin, begin + shard_, [&](size_t i, int64_t off, int64_t at, int64_t n) {
    torch::Tensor v = params_[i].detach().view(-1).narrow(0, off, n);
    pieces_.push_back({i, off, n, at, v});
  });
}

template <class F>
void ZeroShards::for_segments(int64_t begin, int64_t end, F&& f) const {
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t s = starts_[i], e = s + params_[i].numel();
    const int64_t lo = std::max(s, begin), hi = std::min(e, end);
    if (lo < hi) f(i, lo - s, lo - begin, hi - lo);
  }
}

std::vector<ZeroShards::Segment> ZeroShards::layout(int64_t world, int64_t rank) const {
  if (world < 1 || rank < 0 || rank >= world)
    throw Error("ZeRO layout: rank " + std::to_string(rank) + " of " + std::to_string(world) + " ranks");
  const int64_t shard = (total_ + world - 1) / world, begin = rank * shard;
  std::vector<Segment> out;
  for_segments(begin, begin + shard, [&](size_t i, int64_t off, int64_t, int64_t n) { out.push_back({i, off, n}); });
  return out;
}

void ZeroShards::reduce_gradients(bool averaged) {
  torch::NoGradGuard ng;
  if (averaged && stage_ != 1) throw Error("ZeroShards: only ZeRO-1 takes gradients averaged by a GradientReducer");
  has_grad_.assign(params_.size(), false);
  for (size_t i = 0; i < params_.size(); ++i) has_grad_[i] = params_[i].grad().defined();
  if (stage_ == 1) {
    if (!averaged) dp_.average_gradients(params_, bucket_bytes_);
    for (auto& pc : pieces_)
      if (has_grad_[pc.param]) pc.value.mutable_grad() = params_[pc.param].grad().view(-1).narrow(0, pc.offset, pc.numel);
    return;
  }
  // Stage 2: bucket k holds, for every rank r, elements [k*B, k*B + n) of shard r; the
  // reduce-scatter leaves this rank with its own n elements, summed, in the shard buffer.
  const int64_t W = dp_.world_size();
  const auto opts = params_.at(0).options();
  grad_shard_ = torch::zeros({shard_}, opts);
  for (int64_t k0 = 0; k0 < shard_; k0 += bucket_) {
    const int64_t n = std::min(bucket_, shard_ - k0);
    torch::Tensor in = torch::zeros({W * n}, opts);  // padding and parameters without grad stay 0
    for (int64_t r = 0; r < W; ++r) {
      for_segments(r * shard_ + k0, r * shard_ + k0 + n, [&](size_t i, int64_t off, int64_t at, int64_t len) {
        if (has_grad_[i]) in.narrow(0, r * n + at, len).copy_(params_[i].grad().view(-1).narrow(0, off, len));
      });
    }
    torch::Tensor out = grad_shard_.narrow(0, k0, n);
    dp_.reduce_scatter_sum(out, in);
  }
  grad_shard_.div_(W);
  // The point of ZeRO-2: no rank keeps the full gradient past the reduction.
  for (auto& p : params_) p.mutable_grad() = torch::Tensor();
  for (auto& pc : pieces_)
    if (has_grad_[pc.param]) pc.value.mutable_grad() = grad_shard_.narrow(0, pc.shard_offset, pc.numel);
}

double ZeroShards::clip_grad_norm(double max_norm) {
  torch::NoGradGuard ng;
  double local = 0;  // (the shards may live on a GPU: sum there, one number per piece back)
  for (const auto& pc : pieces_)
    if (pc.value.grad().defined()) local += pc.value.grad().to(torch::kDouble).pow(2).sum().item<double>();
  const double norm = std::sqrt(dp_.sum(local));
  if (max_norm > 0 && std::isfinite(norm) && norm > max_norm) {
    const double scale = max_norm / (norm + 1e-6);
    for (auto& pc : pieces_)
      if (pc.value.grad().defined()) pc.value.grad().mul_(scale);
  }
  return norm;
}

void ZeroShards::gather_parameters() {
  torch::NoGradGuard ng;
  const int64_t W = dp_.world_size(), me = dp_.rank();
  const auto opts = params_.at(0).options();
  for (int64_t k0 = 0; k0 < shard_; k0 += bucket_) {
    const int64_t n = std::min(bucket_, shard_ - k0);
    torch::Tensor in = torch::zeros({n}, opts);
    for_segments(me * shard_ + k0, me * shard_ + k0 + n, [&](size_t i, int64_t off, int64_t at, int64_t len) {
      in.narrow(0, at, len).copy_(params_[i].detach().view(-1).narrow(0, off, len));
    });
    torch::Tensor out = torch::empty({W * n}, opts);
    dp_.all_gather(out, in);
    for (int64_t r = 0; r < W; ++r) {
      if (r == me) continue;  // already in place
      for_segments(r * shard_ + k0, r * shard_ + k0 + n, [&](size_t i, int64_t off, int64_t at, int64_t len) {
        params_[i].detach().view(-1).narrow(0, off, len).copy_(out.narrow(0, r * n + at, len));
      });
    }
  }
}

void ZeroShards::release_gradients() {
  for (auto& pc : pieces_) pc.value.mutable_grad() = torch::Tensor();
  grad_shard_ = torch::Tensor();
}

int64_t ZeroShards::gradient_bytes() const {
  return bonsai::gradient_bytes(params_) + (grad_shard_.defined() ? grad_shard_.nbytes() : 0);
}

}  // namespace bonsai
