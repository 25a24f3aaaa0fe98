#include "worker/service/worker_session.h"

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <thread>

#include "tessera/v1/worker.grpc.pb.h"
#include "worker/service/plan_codec.h"
#include "worker/service/step_trace.h"

namespace tessera::worker {

Status WorkerSessionOptions::validate() const {
  if (router_address.empty()) return invalid_argument("worker: router_address is empty");
  if (backoff_initial.count() <= 0 || backoff_max < backoff_initial) {
    return invalid_argument("worker: backoff_initial must be positive and at most backoff_max");
  }
  if (heartbeat_interval.count() <= 0) return invalid_argument("worker: heartbeat_interval must be positive");
  if (world_size < 1 || rank >= world_size) return invalid_argument("worker: rank must be below world_size");
  return Status::ok();
}

WorkerSession::WorkerSession(engine::Engine& engine, WorkerSessionOptions options)
    : engine_(engine), options_(std::move(options)) {
  if (options_.worker_id.empty()) {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    options_.worker_id = std::string(host) + "/" + std::to_string(getpid());
  }
}

WorkerSession::~WorkerSession() { stop(); }

void WorkerSession::stop() {
  stopping_ = true;
  std::lock_guard lock(mutex_);
  if (context_) context_->TryCancel();
  wake_heartbeat_.notify_all();
}

void WorkerSession::drain() {
  std::lock_guard lock(mutex_);
  draining_ = true;
  wake_heartbeat_.notify_all();
}

WorkerSessionStats WorkerSession::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

Status WorkerSession::run() {
  TESSERA_RETURN_IF_ERROR(options_.validate());
  auto backoff = options_.backoff_initial;
  while (!stopping_) {
    bool final_detach = false;
    const Status s = serve_once(&final_detach);
    // Whatever the router had planned is gone with the stream.
    engine_.release_all();
    if (final_detach) return Status::ok();
    if (stopping_) break;
    if (s.is_ok()) backoff = options_.backoff_initial;  // a clean detach: dial again soon
    // Sleep in small slices so stop() is prompt.
    const auto until = std::chrono::steady_clock::now() + backoff;
    while (!stopping_ && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    backoff = std::min(backoff * 2, options_.backoff_max);
  }
  return cancelled("worker: stopped");
}

Status WorkerSession::serve_once(bool* final_detach) {
  auto channel = grpc::CreateChannel(options_.router_address, grpc::InsecureChannelCredentials());
  auto stub = v1::WorkerHub::NewStub(channel);
  grpc::ClientContext context;
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return cancelled("worker: stopped");
    context_ = &context;
  }
  struct ClearContext {
    WorkerSession* self;
    ~ClearContext() {
      self->attached_ = false;
      std::lock_guard lock(self->mutex_);
      self->context_ = nullptr;
    }
  } clear_context{this};

  auto stream = stub->Attach(&context);
  // The step loop (this thread) and the heartbeat thread both write; one at a time.
  std::mutex write_mutex;
  auto last_write = std::chrono::steady_clock::now();
  auto write = [&](const v1::WorkerMessage& m) {
    std::lock_guard lock(write_mutex);
    last_write = std::chrono::steady_clock::now();
    return stream->Write(m);
  };
  bool ending = false;  // guarded by mutex_: the heartbeat thread stops
  std::thread heartbeat([&] {
    bool told_draining = false;
    std::unique_lock lock(mutex_);
    while (!ending && !stopping_) {
      wake_heartbeat_.wait_for(lock, options_.heartbeat_interval / 4);
      if (ending || stopping_ || !attached_) continue;
      const bool drain_news = draining_ && !told_draining;
      {
        std::lock_guard wl(write_mutex);
        if (!drain_news && std::chrono::steady_clock::now() - last_write < options_.heartbeat_interval) continue;
      }
      lock.unlock();
      v1::WorkerMessage m;
      v1::Heartbeat* hb = m.mutable_heartbeat();
      hb->set_unix_us(std::chrono::duration_cast<std::chrono::microseconds>(
                          std::chrono::system_clock::now().time_since_epoch()).count());
      hb->set_current_step_id(current_step_);
      hb->set_draining(draining_);
      const bool ok = write(m);
      lock.lock();
      if (!ok) break;  // the reading side sees the broken stream
      told_draining = told_draining || hb->draining();
      ++stats_.num_heartbeats;
    }
  });
  // Before the stream finishes (no write may race WritesDone/Finish) or goes away.
  auto stop_heartbeat = [&] {
    {
      std::lock_guard lock(mutex_);
      ending = true;
    }
    wake_heartbeat_.notify_all();
    if (heartbeat.joinable()) heartbeat.join();
  };
  struct JoinHeartbeat {
    decltype(stop_heartbeat)& stop;
    ~JoinHeartbeat() { stop(); }
  } join_heartbeat{stop_heartbeat};
  const models::ModelConfig& c = engine_.config();
  v1::WorkerMessage hello;
  v1::WorkerDescription* d = hello.mutable_describe();
  d->set_protocol_version(kProtocolVersion);
  d->set_worker_id(options_.worker_id);
  v1::ModelInfo* model = d->mutable_model();
  model->set_name(options_.model_name);
  model->set_architecture(c.architecture);
  model->set_context_length_tokens(c.max_position_embeddings);
  model->set_vocab_size(c.vocab_size);
  model->mutable_eos_token_ids()->Assign(c.eos_token_ids.begin(), c.eos_token_ids.end());
  model->set_bos_token_id(c.bos_token_id);
  model->set_weight_dtype(c.weight_dtype);
  d->set_group(options_.group);
  d->set_rank(options_.rank);
  d->set_world_size(options_.world_size);
  d->set_tensor_parallel_size(1);
  d->set_pipeline_parallel_size(1);
  d->set_num_kv_pages(static_cast<uint64_t>(engine_.num_pages()));
  d->set_page_size_tokens(static_cast<uint32_t>(engine_.page_size()));
  d->set_max_step_tokens(static_cast<uint32_t>(engine_.options().max_batch_tokens));
  d->set_max_step_sequences(static_cast<uint32_t>(engine_.options().max_sequences));
  d->set_device(engine_.backend_name());
  if (!write(hello)) return unavailable("worker: the router closed the stream before the description");

  v1::RouterMessage msg;
  bool accepted = false;
  while (stream->Read(&msg)) {
    switch (msg.kind_case()) {
      case v1::RouterMessage::kAccepted: {
        accepted = true;
        std::lock_guard lock(mutex_);
        attached_ = true;
        ++stats_.num_attachments;
        wake_heartbeat_.notify_all();  // a drain asked for before the attachment goes out now
        break;
      }
      case v1::RouterMessage::kGroupReady: break;  // single-rank groups need no collectives
      case v1::RouterMessage::kDetach:
        *final_detach = msg.detach().final();
        stop_heartbeat();
        stream->WritesDone();
        (void)stream->Finish();
        return Status::ok();
      case v1::RouterMessage::kPlan: {
        v1::WorkerMessage reply;
        if (!accepted) {
          return failed_precondition("worker: a plan arrived before the attachment was accepted");
        }
        current_step_ = msg.plan().step_id();
        using Clock = std::chrono::steady_clock;
        const auto seconds = [](Clock::duration span) { return std::chrono::duration<double>(span).count(); };
        const auto step_start = Clock::now();
        auto input = step_input_from_proto(msg.plan());
        const auto decoded = Clock::now();
        Result<engine::StepOutput> out = input ? engine_.step(*input) : Result<engine::StepOutput>(input.status());
        current_step_ = 0;
        const auto stepped = Clock::now();
        if (out) *reply.mutable_result() = step_result_to_proto(msg.plan().step_id(), *out);
        const auto done = Clock::now();
        {
          std::lock_guard lock(mutex_);
          stats_.step_seconds += seconds(done - step_start);
          stats_.decode_seconds += seconds(decoded - step_start);
          stats_.engine = engine_.phase_seconds();
          stats_.encode_seconds += seconds(done - stepped);
        }
        if (options_.step_trace) {
          options_.step_trace->record(msg.plan().step_id(), input ? *input : engine::StepInput{}, step_start, done,
                                      out.is_ok());
        }
        if (out) {
          std::lock_guard lock(mutex_);
          ++stats_.num_steps;
        } else {
          // The engine checked the plan before touching anything: its state is intact,
          // only this plan's requests fail.
          v1::WorkerFault* f = reply.mutable_fault();
          f->set_step_id(msg.plan().step_id());
          f->set_code(std::string(status_code_name(out.status().code())));
          f->set_message(out.status().message());
          f->set_fatal(false);
          std::lock_guard lock(mutex_);
          ++stats_.num_faults;
        }
        if (!write(reply)) return unavailable("worker: the stream broke while sending a result");
        break;
      }
      case v1::RouterMessage::KIND_NOT_SET: break;
    }
  }
  stop_heartbeat();
  const grpc::Status st = stream->Finish();
  return unavailable("worker: attachment ended: " + (st.ok() ? std::string("router closed the stream") : st.error_message()));
}

}  // namespace tessera::worker
