package debugapi

// protoc comes from Debian's protobuf-compiler; the plugins are the versions
// pinned as tools in go.mod, so `go generate` gives byte-identical output.
//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(go tool -n protoc-gen-go-grpc) -I proto --go_out=. --go_opt=module=github.com/portcullis-mesh/portcullis/agent/debugapi --go-grpc_out=. --go-grpc_opt=module=github.com/portcullis-mesh/portcullis/agent/debugapi portcullis/debug/v1/debug.proto"
