// Logistic regression on synthetic data, trained with AdamW through adamcore's C++ API.
//
// The model is a weight vector and a bias: two tensors, updated by one adam_step call
// per step (one call for the whole parameter group). The C++ API validates nothing
// by itself, so the program checks what the Python bindings would check before the
// first step (docs/cpp.md, "Validation"). It prints the loss as it falls and exits
// with status 1 if it does not fall far enough.
#include <adamcore/adamcore.h>
#include <adamcore/version.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr std::size_t kSamples = 4096;
constexpr std::size_t kFeatures = 32;
constexpr std::int64_t kSteps = 200;

struct Data {
  std::vector<float> x;  // kSamples x kFeatures, row-major
  std::vector<float> y;  // 0 or 1
};

// Labels from a hidden linear model plus noise: separable up to the noise.
Data make_data(std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w_true(kFeatures);
  for (auto& w : w_true) w = normal(rng);
  Data d{std::vector<float>(kSamples * kFeatures), std::vector<float>(kSamples)};
  for (std::size_t i = 0; i < kSamples; ++i) {
    double z = 0.5;
    for (std::size_t j = 0; j < kFeatures; ++j) {
      const float v = normal(rng);
      d.x[i * kFeatures + j] = v;
      z += static_cast<double>(v) * w_true[j];
    }
    d.y[i] = z + 0.5 * normal(rng) > 0 ? 1.0f : 0.0f;
  }
  return d;
}

// Mean binary cross-entropy and accuracy of (w, b) on the data; with the gradients of
// the loss written to grad_w and grad_b when they are given.
double loss_and_grad(const Data& d, const std::vector<float>& w, float b, double* accuracy,
                     std::vector<float>* grad_w, float* grad_b) {
  std::vector<double> gw(kFeatures, 0.0);
  double gb = 0.0, loss = 0.0;
  std::size_t correct = 0;
  for (std::size_t i = 0; i < kSamples; ++i) {
    double z = b;
    const float* row = &d.x[i * kFeatures];
    for (std::size_t j = 0; j < kFeatures; ++j) z += static_cast<double>(row[j]) * w[j];
    const double p = 1.0 / (1.0 + std::exp(-z));
    // log(1 + e^-z) for y = 1, log(1 + e^z) for y = 0, computed without overflow.
    const double s = d.y[i] > 0.5f ? -z : z;
    loss += s > 0 ? s + std::log1p(std::exp(-s)) : std::log1p(std::exp(s));
    correct += (p > 0.5) == (d.y[i] > 0.5f);
    const double r = p - d.y[i];
    for (std::size_t j = 0; j < kFeatures; ++j) gw[j] += r * row[j];
    gb += r;
  }
  if (grad_w != nullptr) {
    for (std::size_t j = 0; j < kFeatures; ++j) {
      (*grad_w)[j] = static_cast<float>(gw[j] / kSamples);
    }
    *grad_b = static_cast<float>(gb / kSamples);
  }
  *accuracy = static_cast<double>(correct) / kSamples;
  return loss / kSamples;
}

// What the Python bindings check and adam_step does not: non-null buffers of the
// same size per tensor, max_exp_avg_sq exactly with amsgrad, and no two buffers
// sharing memory. (float32 vectors are aligned to their element size by construction.)
std::string check_buffers(const adamcore::AdamBuffers* tensors, std::size_t count,
                          const adamcore::AdamHyper& h) {
  struct Span {
    const char* begin;
    const char* end;
  };
  std::vector<Span> spans;
  for (std::size_t t = 0; t < count; ++t) {
    const adamcore::AdamBuffers& b = tensors[t];
    if (b.size == 0) continue;
    if (!b.param || !b.grad || !b.exp_avg || !b.exp_avg_sq) {
      return "tensor " + std::to_string(t) + ": a buffer is null";
    }
    if ((b.max_exp_avg_sq != nullptr) != h.amsgrad) {
      return "tensor " + std::to_string(t) + ": max_exp_avg_sq must be given exactly with amsgrad";
    }
    const void* buffers[] = {b.param, b.grad, b.exp_avg, b.exp_avg_sq, b.max_exp_avg_sq};
    for (const void* p : buffers) {
      if (p != nullptr) {
        const char* c = static_cast<const char*>(p);
        spans.push_back({c, c + b.size * sizeof(float)});
      }
    }
  }
  for (std::size_t i = 0; i < spans.size(); ++i) {
    for (std::size_t k = i + 1; k < spans.size(); ++k) {
      if (spans[i].begin < spans[k].end && spans[k].begin < spans[i].end) {
        return "two buffers share memory";
      }
    }
  }
  return {};
}

}  // namespace

int main() {
  std::printf("adamcore %s (headers), kernels: %s, threads: %d\n", ADAMCORE_VERSION_STRING,
              adamcore::isa_name(adamcore::active_isa()), adamcore::get_num_threads());

  const Data data = make_data(12345);

  // Parameters, gradients and AdamW's state, all float32 (Layout{}'s default).
  std::vector<float> w(kFeatures, 0.0f), grad_w(kFeatures, 0.0f);
  std::vector<float> m_w(kFeatures, 0.0f), v_w(kFeatures, 0.0f);
  float b = 0.0f, grad_b = 0.0f, m_b = 0.0f, v_b = 0.0f;
  const adamcore::AdamBuffers group[2] = {
      {w.data(), grad_w.data(), m_w.data(), v_w.data(), nullptr, kFeatures, nullptr},
      {&b, &grad_b, &m_b, &v_b, nullptr, 1, nullptr},
  };

  adamcore::AdamHyper hyper;
  hyper.lr = 0.05;
  hyper.weight_decay = 1e-2;
  hyper.decoupled = true;  // AdamW
  const adamcore::Layout layout;  // float32 everywhere

  // Validate once: the buffers and the layout do not change between steps, and the
  // hyperparameters are checked at step 1 (check_adam_hyper's only step rule is >= 1).
  const std::string errors[] = {adamcore::check_adam_hyper(hyper, 1),
                                adamcore::check_layout(layout), check_buffers(group, 2, hyper)};
  for (const std::string& err : errors) {
    if (!err.empty()) {
      std::fprintf(stderr, "invalid step: %s\n", err.c_str());
      return 2;
    }
  }

  double accuracy = 0.0;
  const double first = loss_and_grad(data, w, b, &accuracy, nullptr, nullptr);
  std::printf("step %4d  loss %.6f  accuracy %.4f\n", 0, first, accuracy);
  double loss = first;
  for (std::int64_t step = 1; step <= kSteps; ++step) {
    loss_and_grad(data, w, b, &accuracy, &grad_w, &grad_b);
    adamcore::adam_step(group, 2, step, hyper, nullptr, -1.0, layout);
    if (step % 20 == 0) {
      loss = loss_and_grad(data, w, b, &accuracy, nullptr, nullptr);
      std::printf("step %4lld  loss %.6f  accuracy %.4f\n", static_cast<long long>(step), loss,
                  accuracy);
    }
  }

  // From ln 2 = 0.693 at w = 0 the loss reaches about a tenth of it here; demand a third.
  if (!(loss < first / 3) || !(accuracy > 0.9)) {
    std::fprintf(stderr, "error: the loss did not fall (%.6f -> %.6f, accuracy %.4f)\n", first,
                 loss, accuracy);
    return 1;
  }
  std::printf("ok: loss %.6f -> %.6f\n", first, loss);
  return 0;
}
