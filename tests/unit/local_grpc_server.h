// An in-process gRPC server on a free loopback port, for tests that talk to a service
// over the real wire.
#pragma once

#include <catch2/catch.hpp>
#include <grpcpp/grpcpp.h>

#include <initializer_list>
#include <memory>
#include <string>

namespace tessera::testing {

struct LocalGrpcServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
};

inline LocalGrpcServer start_local_grpc_server(std::initializer_list<grpc::Service*> services) {
  LocalGrpcServer s;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &s.port);
  for (grpc::Service* service : services) builder.RegisterService(service);
  s.server = builder.BuildAndStart();
  REQUIRE(s.server);
  REQUIRE(s.port > 0);
  return s;
}

}  // namespace tessera::testing
