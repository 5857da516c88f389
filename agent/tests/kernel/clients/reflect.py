"""A gRPC client that knows nothing about Kite but what the server's reflection says.

Usage: reflect.py HOST:PORT
Prints one JSON object: the services the server lists, the health status, and the answer
of kite.v1.Kite/List decoded with descriptors fetched through reflection.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel, request):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    return next(stub.ServerReflectionInfo(iter([request])))


def main():
    channel = grpc.insecure_channel(sys.argv[1])
    grpc.channel_ready_future(channel).result(timeout=10)
    services = [
        s.name
        for s in reflect(channel, reflection_pb2.ServerReflectionRequest(list_services="")).list_services_response.service
    ]
    pool = descriptor_pool.DescriptorPool()
    seen = set()

    def load(symbol):
        resp = reflect(channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        for raw in resp.file_descriptor_response.file_descriptor_proto:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            if fd.name not in seen:
                seen.add(fd.name)
                pool.Add(fd)

    load("grpc.health.v1.Health")
    load("kite.v1.Kite")

    def call(service, method, request_fields):
        svc = pool.FindServiceByName(service)
        m = svc.FindMethodByName(method)
        req_cls = message_factory.GetMessageClass(m.input_type)
        resp_cls = message_factory.GetMessageClass(m.output_type)
        rpc = channel.unary_unary(
            f"/{service}/{method}",
            request_serializer=req_cls.SerializeToString,
            response_deserializer=resp_cls.FromString,
        )
        return rpc(req_cls(**request_fields), timeout=10)

    health = call("grpc.health.v1.Health", "Check", {"service": "kite.v1.Kite"})
    listed = call("kite.v1.Kite", "List", {})
    print(json.dumps({
        "services": services,
        "health": json_format.MessageToDict(health),
        "list": json_format.MessageToDict(listed, preserving_proto_field_name=True),
    }))


if __name__ == "__main__":
    main()
