#include "model/gguf_export.h"

#include <cmath>

#include "core/error.h"
#include "core/strings.h"
#include "model/ggml_quants.h"
#include "model/tensor_names.h"

namespace bonsai {
namespace {

using gguf::GgmlType;
using gguf::Value;

struct TypeChoice {
  GgmlType type;
  uint32_t file_type;  // llama.cpp's llama_ftype for general.file_type
};

TypeChoice choose_type(const std::string& dtype) {
  if (dtype == "f32") return {GgmlType::F32, 0};
  if (dtype == "f16") return {GgmlType::F16, 1};
  if (dtype == "q8_0") return {GgmlType::Q8_0, 7};
  if (dtype == "bf16") return {GgmlType::BF16, 32};
  throw Error("GGUF export: unknown dtype '" + dtype + "'", "use f32, f16, bf16 or q8_0");
}

// Streams `t` (fp32, contiguous, 2-D or 1-D) to the sink in `type`, one row at a time.
void emit(const torch::Tensor& t, GgmlType type, const gguf::Writer::Sink& sink) {
  const int64_t cols = t.size(-1), rows = t.numel() / cols;
  const float* src = t.data_ptr<float>();
  std::vector<uint8_t> buf(gguf::row_bytes(type, cols));
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = src + r * cols;
    switch (type) {
      case GgmlType::F32: sink(row, cols * sizeof(float)); continue;
      case GgmlType::F16:
        for (int64_t c = 0; c < cols; ++c) reinterpret_cast<uint16_t*>(buf.data())[c] = gguf::fp32_to_fp16(row[c]);
        break;
      case GgmlType::BF16:
        for (int64_t c = 0; c < cols; ++c) reinterpret_cast<uint16_t*>(buf.data())[c] = gguf::fp32_to_bf16(row[c]);
        break;
      case GgmlType::Q8_0: gguf::quantize_q8_0(row, buf.data(), cols); break;
      default: throw Error(std::string("GGUF export: cannot write type ") + gguf::type_name(type));
    }
    sink(buf.data(), buf.size());
  }
}

void add_arch_kv(gguf::Writer& w, const LlamaConfig& c, const GgufExportOptions& opt, uint32_t file_type) {
  auto u32 = [](int64_t v) { return Value::u32(static_cast<uint32_t>(v)); };
  w.add_kv("general.architecture", Value::string("llama"));
  w.add_kv("general.name", Value::string(opt.name.empty() ? "bonsai-llama" : opt.name));
  w.add_kv("general.file_type", Value::u32(file_type));
  w.add_kv("general.quantization_version", Value::u32(2));
  w.add_kv("llama.vocab_size", u32(c.vocab_size));
  w.add_kv("llama.context_length", u32(c.max_position_embeddings));
  w.add_kv("llama.embedding_length", u32(c.hidden_size));
  w.add_kv("llama.block_count", u32(c.num_hidden_layers));
  w.add_kv("llama.feed_forward_length", u32(c.intermediate_size));
  w.add_kv("llama.attention.head_count", u32(c.num_attention_heads));
  w.add_kv("llama.attention.head_count_kv", u32(c.num_key_value_heads));
  w.add_kv("llama.attention.key_length", u32(c.head_dim));
  w.add_kv("llama.attention.value_length", u32(c.head_dim));
  w.add_kv("llama.rope.dimension_count", u32(c.head_dim));
  w.add_kv("llama.rope.freq_base", Value::f32(static_cast<float>(c.rope_theta)));
  w.add_kv("llama.attention.layer_norm_rms_epsilon", Value::f32(static_cast<float>(c.rms_norm_eps)));
  if (c.rope_scaling.type == "llama3") {
    // llama.cpp only needs rope_freqs; these let bonsai's loader rebuild the exact HF config.
    w.add_kv("bonsai.rope.llama3.factor", Value::f32(static_cast<float>(c.rope_scaling.factor)));
    w.add_kv("bonsai.rope.llama3.low_freq_factor", Value::f32(static_cast<float>(c.rope_scaling.low_freq_factor)));
    w.add_kv("bonsai.rope.llama3.high_freq_factor", Value::f32(static_cast<float>(c.rope_scaling.high_freq_factor)));
    w.add_kv("bonsai.rope.llama3.original_max_position_embeddings", u32(c.rope_scaling.original_max_position_embeddings));
  }
}

}  // namespace

torch::Tensor permute_qk_for_gguf(const torch::Tensor& w, int64_t n_head) {
  const int64_t rows = w.size(0), cols = w.size(1);
  return w.reshape({n_head, 2, rows / n_head / 2, cols}).transpose(1, 2).reshape({rows, cols}).contiguous();
}

torch::Tensor llama3_rope_factors(const LlamaConfig& c) {
  // Divisor of each inverse frequency (what ggml scales the rotation period by): 1 for short
  // wavelengths, `factor` for long ones, blended in between — the same formula as rope_inv_freq().
  const auto& s = c.rope_scaling;
  const double old_ctx = static_cast<double>(s.original_max_position_embeddings);
  std::vector<float> f;
  for (int64_t i = 0; i < c.head_dim; i += 2) {
    double inv = 1.0 / std::pow(c.rope_theta, static_cast<double>(i) / c.head_dim);
    double wavelen = 2 * M_PI / inv;
    if (wavelen < old_ctx / s.high_freq_factor) f.push_back(1.0f);
    else if (wavelen > old_ctx / s.low_freq_factor) f.push_back(static_cast<float>(s.factor));
    else {
      double smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f.push_back(static_cast<float>(1.0 / ((1 - smooth) / s.factor + smooth)));
    }
  }
  return torch::tensor(f, torch::kFloat);
}

void write_gguf(const std::string& path, const LlamaConfig& cfg, const std::map<std::string, torch::Tensor>& tensors,
                const GgufExportOptions& opt) {
  TypeChoice tc = choose_type(opt.dtype);
  gguf::Writer w(path);
  add_arch_kv(w, cfg, opt, tc.file_type);
  for (const auto& [k, v] : opt.tokenizer_kv) w.add_kv(k, v);
  std::vector<torch::Tensor> keep;  // tensors referenced by the producers until write() returns
  if (cfg.rope_scaling.type == "llama3") {
    keep.push_back(llama3_rope_factors(cfg));
    w.add_tensor("rope_freqs.weight", {static_cast<uint64_t>(cfg.head_dim / 2)}, GgmlType::F32,
                 keep.back().data_ptr(), keep.back().nbytes());
  }
  for (const auto& s : llama_tensor_specs(cfg)) {
    auto it = tensors.find(s.hf_name);
    if (it == tensors.end()) throw Error("GGUF export: tensor '" + s.hf_name + "' is missing");
    if (it->second.sizes().vec() != s.shape) {
      throw Error("GGUF export: tensor '" + s.hf_name + "' has shape " + shape_str(it->second.sizes().vec()) +
                  ", expected " + shape_str(s.shape));
    }
    torch::Tensor t = it->second;
    GgmlType type = s.shape.size() == 1 ? GgmlType::F32 : tc.type;
    std::vector<uint64_t> ne(s.shape.rbegin(), s.shape.rend());
    uint64_t nbytes = gguf::row_bytes(type, s.shape.back()) * (t.numel() / s.shape.back());
    TensorRole role = s.role;
    int64_t heads = role == TensorRole::kAttnQ ? cfg.num_attention_heads : cfg.num_key_value_heads;
    w.add_tensor(s.gguf_name, ne, type, nbytes, [t, type, role, heads](const gguf::Writer::Sink& sink) {
      torch::Tensor f = t.to(torch::kCPU, torch::kFloat).contiguous();  // one host tensor in fp32 at a time
      if (role == TensorRole::kAttnQ || role == TensorRole::kAttnK) f = permute_qk_for_gguf(f, heads);
      emit(f, type, sink);
    });
  }
  w.write();
}

std::string ollama_modelfile(const std::string& gguf_file, const std::string& tmpl) {
  std::string m = "# Ollama Modelfile written by `bonsai export --format gguf`.\n"
                  "#   ollama create NAME -f Modelfile && ollama run NAME\nFROM ./" + gguf_file + "\n";
  if (tmpl.find("<|im_start|>") != std::string::npos) {
    m += "TEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
         "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
         "{{ .Response }}<|im_end|>\n\"\"\"\n";
    m += "PARAMETER stop \"<|im_start|>\"\nPARAMETER stop \"<|im_end|>\"\n";
  } else if (tmpl.find("<|start_header_id|>") != std::string::npos) {
    m += "TEMPLATE \"\"\"{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
         "{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>{{ end }}"
         "<|start_header_id|>assistant<|end_header_id|>\n\n{{ .Response }}<|eot_id|>\"\"\"\n";
    m += "PARAMETER stop \"<|start_header_id|>\"\nPARAMETER stop \"<|end_header_id|>\"\nPARAMETER stop \"<|eot_id|>\"\n";
  } else {
    throw Error("Ollama Modelfile: the model's chat template is neither ChatML nor Llama 3",
                "write the TEMPLATE line by hand; the GGUF itself is complete");
  }
  return m;
}

}  // namespace bonsai
