// Package coreclient talks to the Kubernetes core/v1 API with a REST client
// that knows the core/v1 types only, in place of client-go's clientset
// (k8s.io/client-go/kubernetes). The clientset's typed clients register
// every API group's types, and its informer factory links every group's
// clients, listers, informers and apply configurations: hundreds of
// packages and tens of megabytes in an agent that reads pods, service
// accounts and namespaces and writes Events.
//
// Requests are built as client-go's generated core/v1 client builds them:
// the same path, parameter encoding, content negotiation (protobuf where
// the generated client prefers it) and rate limiting.
package coreclient

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Scheme knows the core/v1 types and the meta/v1 options, as
// k8s.io/client-go/kubernetes/scheme does for every group.
var Scheme = runtime.NewScheme()

var (
	codecs         = serializer.NewCodecFactory(Scheme)
	parameterCodec = runtime.NewParameterCodec(Scheme)
)

func init() {
	metav1.AddToGroupVersion(Scheme, schema.GroupVersion{Version: "v1"})
	utilruntime.Must(corev1.AddToScheme(Scheme))
}

// NewForConfig returns a REST client for the core/v1 API group configured
// from c as client-go's typed CoreV1 client is (c is not modified). Its
// rate limiter, from c, is shared by everything using the client.
func NewForConfig(c *rest.Config) (*rest.RESTClient, error) {
	config := *c
	gv := corev1.SchemeGroupVersion
	config.GroupVersion = &gv
	config.APIPath = "/api"
	config.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(Scheme, codecs).WithoutConversion()
	if config.UserAgent == "" {
		config.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(&config)
	if err != nil {
		return nil, fmt.Errorf("new core/v1 client: %w", err)
	}
	return rc, nil
}

// ListWatch lists and watches resource (a core/v1 resource such as "pods")
// in every namespace through client, a client from NewForConfig, as
// client-go's typed informers do. newList returns an empty list object of
// the resource (&corev1.PodList{}). tweak, when not nil, edits the options
// of every list and watch (a field selector, say).
func ListWatch(client rest.Interface, resource string, newList func() runtime.Object, tweak func(*metav1.ListOptions)) cache.ListerWatcher {
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
			if tweak != nil {
				tweak(&opts)
			}
			list := newList()
			err := client.Get().
				UseProtobufAsDefaultIfPreferred(true).
				Resource(resource).
				VersionedParams(&opts, parameterCodec).
				Timeout(timeout(opts)).
				Do(ctx).
				Into(list)
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			if tweak != nil {
				tweak(&opts)
			}
			opts.Watch = true
			return client.Get().
				UseProtobufAsDefaultIfPreferred(true).
				Resource(resource).
				VersionedParams(&opts, parameterCodec).
				Timeout(timeout(opts)).
				Watch(ctx)
		},
	}, client)
}

func timeout(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}

// EventSink writes the Events of a k8s.io/client-go/tools/record
// broadcaster through Client, a client from NewForConfig, each in its own
// namespace, as client-go's typed EventSinkImpl does.
type EventSink struct {
	Client rest.Interface
}

// Create creates event.
func (s EventSink) Create(event *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.Client.Post().
		NamespaceIfScoped(event.Namespace, event.Namespace != "").
		Resource("events").
		Body(event).
		Do(context.Background()).
		Into(out)
	return out, err
}

// Update replaces event, which carries its resource version.
func (s EventSink) Update(event *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.Client.Put().
		NamespaceIfScoped(event.Namespace, event.Namespace != "").
		Resource("events").
		Name(event.Name).
		Body(event).
		Do(context.Background()).
		Into(out)
	return out, err
}

// Patch applies the strategic merge patch data to the event named by
// event's namespace and name.
func (s EventSink) Patch(event *corev1.Event, data []byte) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.Client.Patch(types.StrategicMergePatchType).
		NamespaceIfScoped(event.Namespace, event.Namespace != "").
		Resource("events").
		Name(event.Name).
		Body(data).
		Do(context.Background()).
		Into(out)
	return out, err
}
