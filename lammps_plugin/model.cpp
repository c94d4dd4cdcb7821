#include "model.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <dlfcn.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/headeronly/version.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace nequip {
namespace {

const char *const FORMAT = "nequip_fast.deployed.v3";  // nequip_fast/deploy/package.py
const char *const REDEPLOY = "redeploy the checkpoint with `nequip-fast deploy`";

std::string release(const std::string &version) { return version.substr(0, version.find('+')); }

std::string first_line(const std::string &text) { return text.substr(0, text.find('\n')); }

// The metadata fields the fingerprint covers, in order (SIGNED_FIELDS in nequip_fast/deploy/package.py).
const char *const SIGNED[] = {"format",        "nequip_fast_version", "torch_version", "r_max",
                              "species",       "num_layers",          "dtype",         "device",
                              "conv_backend",  "exchange_width",      "model_config",  "probe_energy",
                              "probe_forces"};

// 64-bit FNV-1a of "key=value" lines joined by '\n' (package.py: fingerprint): an edited metadata
// is refused before the compiled code is loaded.
std::string fingerprint(std::unordered_map<std::string, std::string> &meta) {
  uint64_t hash = 0xcbf29ce484222325ULL;
  bool first = true;
  for (const char *key : SIGNED) {
    std::string line = (first ? "" : "\n") + std::string(key) + "=" + meta[key];
    for (unsigned char c : line) hash = (hash ^ c) * 0x100000001b3ULL;
    first = false;
  }
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(hash));
  return hex;
}

// The fused conv ops (nequip_fast::segment_conv, ...) live in nequip_fast's extension library,
// which must be loaded before a model that calls them runs. RTLD_LAZY: the library also holds a
// Python module init that is never called here.
void load_op_library(const ModelInfo &info) {
  const char *env = std::getenv("NEQUIP_FAST_OPS_LIBRARY");
  std::string path = env ? env : NEQUIP_FAST_OPS_LIBRARY;
  if (path.empty())
    throw std::runtime_error(info.path + " uses nequip_fast's fused '" + info.conv_backend +
                             "' kernels, but the plugin was built without their library; set "
                             "NEQUIP_FAST_OPS_LIBRARY to the path `nequip-fast info` prints");
  if (!dlopen(path.c_str(), RTLD_LAZY | RTLD_GLOBAL))
    throw std::runtime_error(info.path + " uses nequip_fast's fused '" + info.conv_backend +
                             "' kernels, but their library cannot be loaded: " + dlerror() +
                             " (set NEQUIP_FAST_OPS_LIBRARY to the path `nequip-fast info` prints)");
}

}  // namespace

ModelInfo read_model_info(const std::string &path) {
  if (!std::ifstream(path).good()) throw std::runtime_error("model file " + path + " does not exist");
  std::unordered_map<std::string, std::string> meta;
  try {
    meta = torch::inductor::AOTIModelPackageLoader::load_metadata_from_package(path, "model");
  } catch (const std::exception &e) {
    throw std::runtime_error(path + " is not a deployed nequip_fast model (cannot read it as an AOTInductor " +
                             "package: " + first_line(e.what()) + "); " + REDEPLOY);
  }
  if (meta["format"].rfind("nequip_fast.deployed.", 0) == 0 && meta["format"] != FORMAT)
    throw std::runtime_error(path + " was deployed by another nequip_fast version (file format '" + meta["format"] +
                             "', this plugin reads '" + FORMAT + "'); " + REDEPLOY);
  if (meta["format"] != FORMAT)
    throw std::runtime_error(path + " is not a deployed nequip_fast model (format '" + meta["format"] +
                             "', expected '" + FORMAT + "'); " + REDEPLOY);
  for (const char *key : SIGNED)
    if (!meta.count(key)) throw std::runtime_error(path + ": metadata lacks '" + key + "'; " + REDEPLOY);
  if (!meta.count("fingerprint")) throw std::runtime_error(path + ": metadata lacks 'fingerprint'; " + REDEPLOY);

  ModelInfo info;
  info.path = path;
  info.torch_version = meta["torch_version"];
  info.nequip_fast_version = meta["nequip_fast_version"];
  if (release(info.torch_version) != release(TORCH_VERSION))
    throw std::runtime_error(path + " was deployed with torch " + info.torch_version +
                             " but this plugin is built with libtorch " + TORCH_VERSION +
                             "; compiled models are tied to a torch release: " + REDEPLOY + " under torch " +
                             TORCH_VERSION);
  if (meta["fingerprint"] != fingerprint(meta))
    throw std::runtime_error(path + ": its metadata was changed after deployment (the fingerprint does not match); " +
                             REDEPLOY);
  info.dtype = meta["dtype"];
  info.device = meta["device"];
  info.conv_backend = meta["conv_backend"];
  try {
    info.r_max = std::stod(meta["r_max"]);
    info.num_layers = std::stoi(meta["num_layers"]);
    info.exchange_width = std::stoi(meta["exchange_width"]);
  } catch (const std::exception &) {
    throw std::runtime_error(path + ": metadata r_max '" + meta["r_max"] + "', num_layers '" + meta["num_layers"] +
                             "' or exchange_width '" + meta["exchange_width"] + "' is not a number; " + REDEPLOY);
  }
  std::istringstream names(meta["species"]);
  for (std::string name; names >> name;) info.species.push_back(name);
  if (info.species.empty() || info.r_max <= 0 || info.num_layers <= 0 || info.exchange_width <= 0 ||
      (info.dtype != "float32" && info.dtype != "float64"))
    throw std::runtime_error(path + ": metadata has invalid species, r_max, num_layers or dtype; " + REDEPLOY);
  return info;
}

Model::Model(ModelInfo info, int device_index)
    : info_(std::move(info)),
      device_(info_.device == "cpu" ? c10::Device(c10::kCPU)
                                    : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device_index))) {
  if (info_.conv_backend == "cpu" || info_.conv_backend == "cuda") load_op_library(info_);
  try {
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(
        info_.path, "model", false, 1, info_.device == "cpu" ? -1 : static_cast<c10::DeviceIndex>(device_index));
  } catch (const std::exception &e) {
    throw std::runtime_error("cannot load " + info_.path + ": " + first_line(e.what()));
  }
}

Model::~Model() = default;

Outputs Model::run(const at::Tensor &species, const at::Tensor &edge_index, const at::Tensor &edge_vec,
                   int64_t nghost, int64_t npairs) {
  c10::InferenceMode guard;
  // As the Python side (data.neighbors): overlapping atoms give no physical energy (at 0 A a NaN).
  if (edge_vec.size(0) > 0) {
    const double closest = edge_vec.norm(2, 1).min().item<double>();
    if (!(closest >= 0.1))
      throw std::runtime_error("two atoms are " + std::to_string(closest) +
                               " A apart (closer than 0.1 A): overlapping atoms, or non-finite positions");
  }
  const auto dtype = info_.dtype == "float64" ? at::kDouble : at::kFloat;
  const auto index = at::TensorOptions().dtype(at::kLong).device(device_);
  // ghosts: only its length counts; then the edges that own a radial row (nequip_fast/deploy/export.py)
  std::vector<at::Tensor> inputs{species.to(device_), edge_index.to(device_), edge_vec.to(device_, dtype),
                                 at::zeros({nghost}, index), at::arange(npairs, edge_vec.size(0), index)};
  std::vector<at::Tensor> out = loader_->run(inputs);
  auto host = [](const at::Tensor &t) { return t.to(at::kCPU, at::kDouble).contiguous(); };
  return {host(out[0]), host(out[1]), host(out[2]), host(out[3]), host(out[4])};
}

}  // namespace nequip
