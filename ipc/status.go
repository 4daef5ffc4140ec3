package ipc

import (
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/types/known/durationpb"
)

// ErrorDomain is the ErrorInfo domain of every agentidd error.
const ErrorDomain = "agentidd.dev"

// The reasons the guard gives, before any handler runs (the handlers' reasons are the broker's; docs/errors.md lists
// them all).
const (
	ReasonNotAttested     = "NOT_ATTESTED"
	ReasonInvalidArgument = "INVALID_ARGUMENT"
	ReasonOtherUser       = "OTHER_USER"
)

// StatusError is a gRPC status error carrying agentidd's stable reason (ErrorInfo) and, when retry > 0, a RetryInfo.
func StatusError(code codes.Code, reason, msg string, retry time.Duration, meta map[string]string) error {
	st := status.New(code, msg)
	details := []protoadapt.MessageV1{&errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain, Metadata: meta}}
	if retry > 0 {
		details = append(details, &errdetails.RetryInfo{RetryDelay: durationpb.New(retry)})
	}
	withDetails, err := st.WithDetails(details...)
	if err != nil {
		return st.Err()
	}
	return withDetails.Err()
}

// ErrorInfo returns the ErrorInfo detail of a gRPC status error (agentidd's stable reason and its metadata), or nil.
// Both ends of the local API read errors through it.
func ErrorInfo(err error) *errdetails.ErrorInfo {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			return info
		}
	}
	return nil
}

// RetryDelay returns the RetryInfo delay of a gRPC status error, or 0.
func RetryDelay(err error) time.Duration {
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}
