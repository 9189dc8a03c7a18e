// leap_embed: embeddings and exit layers of a leap-export build, from C++ through the C API.
//
//   leap_embed ARTIFACTS IDS [--theta X] [--min-layer N] [--full-depth] [--batch-size N] [--variant V]
//              [--threads N] [--normalize]
//
// IDS: token ids, one sentence per line, space-separated (`leap-export tokenize ARTIFACTS --input texts.txt
// --output ids.txt`). Sentences are batched as EarlyExitEncoder batches them (sorted by length, longest first,
// batch-size rows, each batch right-padded to its longest row), so the results equal the Python runtime's.
// Prints one line per sentence, in input order: its exit layer, a tab, its embedding (space-separated floats);
// then the per-segment statistics on stderr. --theta / --min-layer turn exits on; the build's default policy
// applies otherwise. Exit status 0, or 1 with the library's message on stderr.
#include <leap_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

// every leap_* failure becomes an exception carrying the status name and the library's message
void check(leap_status status, const char* what) {
  if (status != LEAP_OK)
    throw std::runtime_error(std::string(what) + ": " + leap_status_name(status) + ": " + leap_last_error());
}

struct RuntimeDeleter {
  void operator()(leap_runtime* r) const { leap_runtime_destroy(r); }
};
struct ModelDeleter {
  void operator()(leap_model* m) const { leap_model_close(m); }
};

std::vector<std::vector<int64_t>> read_ids(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::vector<int64_t>> rows;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words(line);
    std::vector<int64_t> row;
    int64_t id;
    while (words >> id) row.push_back(id);
    if (!words.eof()) throw std::runtime_error(path + ", line " + std::to_string(rows.size() + 1) + ": not an integer");
    rows.push_back(std::move(row));
  }
  return rows;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: %s ARTIFACTS IDS [--theta X] [--min-layer N] [--full-depth] [--batch-size N] "
                 "[--variant V] [--threads N] [--normalize]\n",
                 argv[0]);
    return 2;
  }
  try {
    const std::string folder = argv[1], ids_path = argv[2];
    double theta = -1;
    int min_layer = -1, threads = 0;
    bool full_depth = false;
    uint32_t flags = 0;
    size_t batch_size = 32;
    std::string variant;
    for (int i = 3; i < argc; i++) {
      std::string a = argv[i];
      auto next = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error(a + " needs a value");
        return argv[++i];
      };
      if (a == "--theta") theta = std::stod(next());
      else if (a == "--min-layer") min_layer = std::stoi(next());
      else if (a == "--batch-size") batch_size = std::stoul(next());
      else if (a == "--variant") variant = next();
      else if (a == "--threads") threads = std::stoi(next());
      else if (a == "--full-depth") full_depth = true;
      else if (a == "--normalize") flags |= LEAP_RUN_NORMALIZE;
      else throw std::runtime_error("unknown option " + a);
    }
    if (batch_size < 1) throw std::runtime_error("--batch-size must be >= 1");

    leap_runtime_options ropts{sizeof(leap_runtime_options), nullptr, threads};
    leap_runtime* raw_rt = nullptr;
    check(leap_runtime_create(&ropts, &raw_rt), "leap_runtime_create");
    std::unique_ptr<leap_runtime, RuntimeDeleter> runtime(raw_rt);

    leap_open_options oopts{sizeof(leap_open_options), variant.empty() ? nullptr : variant.c_str(), 0};
    leap_model* raw_model = nullptr;
    check(leap_model_open(runtime.get(), folder.c_str(), &oopts, &raw_model), "leap_model_open");
    std::unique_ptr<leap_model, ModelDeleter> model(raw_model);
    leap_model_info info;
    check(leap_model_info_get(model.get(), &info), "leap_model_info_get");

    // the build's default policy, with what the command line changes (theta or min_layer: exits on)
    leap_policy policy = info.default_policy;
    if (theta >= 0) policy.theta = static_cast<float>(theta), policy.exits = 1;
    if (min_layer >= 0) policy.min_layer = min_layer, policy.exits = 1;
    if (full_depth) policy.exits = 0;

    const auto rows = read_ids(ids_path);
    const size_t n = rows.size(), hidden = static_cast<size_t>(info.hidden_size);
    std::vector<float> embeddings(n * hidden);
    std::vector<int64_t> exit_layers(n);
    // EarlyExitEncoder's order: longest first, ties in input order
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a].size() > rows[b].size(); });

    std::vector<int32_t> ids, mask;
    std::vector<float> out;
    std::vector<int64_t> layers;
    for (size_t start = 0; start < n; start += batch_size) {
      const size_t b = std::min(batch_size, n - start);
      size_t width = 0;
      for (size_t r = 0; r < b; r++) width = std::max(width, rows[order[start + r]].size());
      ids.assign(b * width, info.pad_id);
      mask.assign(b * width, 0);
      for (size_t r = 0; r < b; r++) {
        const auto& row = rows[order[start + r]];
        for (size_t p = 0; p < row.size(); p++) {
          if (row[p] < INT32_MIN || row[p] > INT32_MAX) throw std::runtime_error("a token id beyond int32");
          ids[r * width + p] = static_cast<int32_t>(row[p]);
          mask[r * width + p] = 1;
        }
      }
      leap_tensor t_ids{ids.data(), LEAP_INT32, static_cast<int64_t>(b), static_cast<int64_t>(width)};
      leap_tensor t_mask{mask.data(), LEAP_INT32, static_cast<int64_t>(b), static_cast<int64_t>(width)};
      out.resize(b * hidden);
      layers.resize(b);
      check(leap_run(model.get(), &t_ids, &t_mask, &policy, flags, out.data(), out.size(), layers.data(), layers.size()),
            "leap_run");
      for (size_t r = 0; r < b; r++) {
        std::copy_n(out.data() + r * hidden, hidden, embeddings.data() + order[start + r] * hidden);
        exit_layers[order[start + r]] = layers[r];
      }
    }

    for (size_t i = 0; i < n; i++) {
      std::printf("%lld\t", static_cast<long long>(exit_layers[i]));
      for (size_t h = 0; h < hidden; h++) std::printf(h ? " %.9g" : "%.9g", static_cast<double>(embeddings[i * hidden + h]));
      std::printf("\n");
    }
    std::vector<leap_segment_stats> stats(static_cast<size_t>(info.num_segments));
    check(leap_stats(model.get(), stats.data(), stats.size(), 0), "leap_stats");
    for (const auto& s : stats)
      std::fprintf(stderr, "layer %lld: %lld rows, %lld exited, mean score %.6f\n", static_cast<long long>(s.layer),
                   static_cast<long long>(s.rows), static_cast<long long>(s.exited),
                   s.rows ? s.score_sum / static_cast<double>(s.rows) : 0.0);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "leap_embed: %s\n", e.what());
    return 1;
  }
  return 0;
}
