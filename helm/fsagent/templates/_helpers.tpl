{{/*
Name helpers, in the usual Helm shape.
*/}}
{{- define "fsagent.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fsagent.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fsagent.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's objects: <fullname>-<component>. Call with (dict "root" $ "component" "agent"). */}}
{{- define "fsagent.componentName" -}}
{{- printf "%s-%s" (include "fsagent.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "fsagent.labels" -}}
helm.sh/chart: {{ include "fsagent.chart" . }}
app.kubernetes.io/name: {{ include "fsagent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fsagent
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the whole release (all four components). */}}
{{- define "fsagent.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "fsagent.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component. Call with (dict "root" $ "component" "agent"). */}}
{{- define "fsagent.selectorLabels" -}}
{{ include "fsagent.releaseSelectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component's objects. Call with (dict "root" $ "component" "agent"). */}}
{{- define "fsagent.componentLabels" -}}
{{ include "fsagent.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "fsagent.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fsagent.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image of one component: [registry/]repository:tag. registry = global.imageRegistry (always
put first), else image.registry (where the release workflow publishes), which a repository that
names its own registry host (first part with a "." or ":", or localhost) does not get. A tag of the
form "tag@sha256:..." (as skaffold's setValueTemplates produce) is kept whole, which yields
repository:tag@digest. Call with (dict "root" $ "image" .Values.agent.image).
*/}}
{{- define "fsagent.image" -}}
{{- $first := first (splitList "/" .image.repository) -}}
{{- $ownHost := and (contains "/" .image.repository) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) -}}
{{- $registry := .root.Values.global.imageRegistry | default (ternary "" .root.Values.image.registry $ownHost) -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion | toString | trimSuffix "@" -}}
{{- if $registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{- define "fsagent.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* In-cluster gRPC addresses, shared by every pod through the config ConfigMap. */}}
{{/*
Agent and sandbox: with grpc.headlessServices the clients resolve the headless Service (one DNS
record per ready pod) and spread calls with round_robin; otherwise the ClusterIP Service.
*/}}
{{- define "fsagent.grpcAddr" -}}
{{- $root := .root -}}
{{- $port := int (get $root.Values.ports .component) -}}
{{- if $root.Values.grpc.headlessServices -}}
{{- printf "dns:///%s.%s.svc:%d" (include "fsagent.componentName" (dict "root" $root "component" (printf "%s-headless" .component))) $root.Release.Namespace $port -}}
{{- else -}}
{{- printf "%s:%d" (include "fsagent.componentName" (dict "root" $root "component" .component)) $port -}}
{{- end -}}
{{- end }}
{{- define "fsagent.agentAddr" -}}
{{- include "fsagent.grpcAddr" (dict "root" . "component" "agent") -}}
{{- end }}
{{- define "fsagent.sandboxAddr" -}}
{{- include "fsagent.grpcAddr" (dict "root" . "component" "sandbox") -}}
{{- end }}
{{- define "fsagent.cacheAddr" -}}
{{- printf "%s:%d" (include "fsagent.componentName" (dict "root" . "component" "cache")) (int .Values.ports.cache) -}}
{{- end }}

{{/* Secrets: the chart creates one only when values are given and no existingSecret is named. */}}
{{- define "fsagent.llmSecretName" -}}
{{- .Values.agent.llm.existingSecret | default (include "fsagent.componentName" (dict "root" . "component" "llm")) -}}
{{- end }}
{{- define "fsagent.llmSecretEnabled" -}}
{{- if or .Values.agent.llm.existingSecret .Values.agent.llm.openaiApiKey .Values.agent.llm.azureApiKey }}true{{ end -}}
{{- end }}
{{- define "fsagent.langfuseSecretName" -}}
{{- .Values.langfuse.existingSecret | default (include "fsagent.componentName" (dict "root" . "component" "langfuse")) -}}
{{- end }}
{{- define "fsagent.langfuseSecretEnabled" -}}
{{- if or .Values.langfuse.existingSecret (and .Values.langfuse.publicKey .Values.langfuse.secretKey) }}true{{ end -}}
{{- end }}
{{- define "fsagent.apiKeysSecretName" -}}
{{- .Values.gateway.apiKeys.existingSecret | default (include "fsagent.componentName" (dict "root" . "component" "api-keys")) -}}
{{- end }}
{{- define "fsagent.apiKeysSecretEnabled" -}}
{{- if or .Values.gateway.apiKeys.existingSecret .Values.gateway.apiKeys.value }}true{{ end -}}
{{- end }}

{{/* Name of the data PVC (ours or the existing one). */}}
{{- define "fsagent.dataClaimName" -}}
{{- .Values.data.persistence.existingClaim | default (include "fsagent.componentName" (dict "root" . "component" "data")) -}}
{{- end }}

{{/* Access modes of the data PVC: as given, else RWO for one sandbox replica and RWX for more. */}}
{{/*
Access modes of the data claim. The API server refuses to change them after creation, so they are
chosen once: the value when set, else the live claim's (looked up during install/upgrade; empty under
`helm template`), else ReadWriteOnce for one sandbox replica and ReadWriteMany for more.
*/}}
{{- define "fsagent.dataAccessModes" -}}
{{- $p := .Values.data.persistence }}
{{- $claim := lookup "v1" "PersistentVolumeClaim" .Release.Namespace (include "fsagent.dataClaimName" .) }}
{{- $live := dig "spec" "accessModes" list $claim }}
{{- if and $p.accessModes $live (not $p.existingClaim) (ne (toJson $live) (toJson $p.accessModes)) }}
{{- fail (printf "data.persistence.accessModes=%s, but claim %s was created with %s and access modes cannot change. Keep the old value, or move the documents to a new claim (docs/deploy.md, \"Scaling the sandbox\")." (toJson $p.accessModes) (include "fsagent.dataClaimName" .) (toJson $live)) }}
{{- end }}
{{- if $p.accessModes }}
{{- toYaml $p.accessModes }}
{{- else if $live }}
{{- toYaml $live }}
{{- else if gt (int .Values.sandbox.replicas) 1 }}
- ReadWriteMany
{{- else }}
- ReadWriteOnce
{{- end }}
{{- end }}

{{/* "true" when sandbox pods on different nodes can share the data volume. */}}
{{- define "fsagent.dataShared" -}}
{{- $modes := include "fsagent.dataAccessModes" . | fromYamlArray }}
{{- if or (not .Values.data.persistence.enabled) (has "ReadWriteMany" $modes) (has "ReadOnlyMany" $modes) }}true{{ end -}}
{{- end }}

{{/* The cache's claim: one the chart manages (resizable, unlike a volumeClaimTemplate), or the user's. */}}
{{- define "fsagent.cacheClaimName" -}}
{{- .Values.cache.persistence.existingClaim | default (include "fsagent.componentName" (dict "root" . "component" "cache")) }}
{{- end }}

{{/* Labels a Prometheus selects ServiceMonitors and rules by: release=<monitoring.release>, then extras. */}}
{{- define "fsagent.monitoringLabels" -}}
{{- $labels := dict }}
{{- with .root.Values.monitoring.release }}
{{- $_ := set $labels "release" . }}
{{- end }}
{{- $labels = mergeOverwrite $labels (.extra | default dict) }}
{{- with $labels }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* Whether an optional monitoring.coreos.com/v1 object should render. Call with (dict "root" $ "force" .Values.serviceMonitor.force). */}}
{{- define "fsagent.hasMonitoringAPI" -}}
{{- if or .force (.root.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") }}true{{ end -}}
{{- end }}

{{/* Pod-level pieces every workload shares. */}}
{{- define "fsagent.podCommon" -}}
serviceAccountName: {{ include "fsagent.serviceAccountName" .root }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- include "fsagent.imagePullSecrets" .root }}
securityContext:
  {{- toYaml .root.Values.podSecurityContext | nindent 2 }}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod annotations: config checksum (restart on config change) plus the user's. */}}
{{- define "fsagent.podAnnotations" -}}
checksum/config: {{ include (print .root.Template.BasePath "/configmap.yaml") .root | sha256sum }}
{{- with .values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Extra env entries given as a map (name: value) or a list of EnvVar objects. */}}
{{- define "fsagent.extraEnv" -}}
{{- if kindIs "map" . }}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- else if . }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* NetworkPolicy fragments (templates/networkpolicy.yaml). */}}
{{- define "fsagent.np.dns" -}}
- to:
    - namespaceSelector:
        {{- toYaml .dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .dns.podSelector | nindent 8 }}
  ports:
    {{- toYaml .dns.ports | nindent 4 }}
{{- end }}
{{- define "fsagent.np.prometheus" -}}
- from:
    - namespaceSelector:
        {{- toYaml .np.prometheus.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .np.prometheus.podSelector | nindent 8 }}
  ports:
    - port: {{ .port }}
      protocol: TCP
{{- end }}
{{- define "fsagent.np.external" -}}
{{- if or .cidrs .peers }}
- to:
    {{- range .cidrs }}
    - ipBlock:
        cidr: {{ .cidr }}
        {{- with .except }}
        except:
          {{- toYaml . | nindent 10 }}
        {{- end }}
    {{- end }}
    {{- with .peers }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    {{- toYaml .ports | nindent 4 }}
{{- end }}
{{- end }}

{{/* The helm-test / doctor ServiceAccount (templates/doctor-rbac.yaml). */}}
{{- define "fsagent.doctorName" -}}
{{- include "fsagent.componentName" (dict "root" . "component" "doctor") -}}
{{- end }}

{{/*
"<service>:<port>" when langfuse.baseUrl names a Service of the release namespace (name, name.<ns>,
name.<ns>.svc[.cluster.local]): the doctor asks its health endpoint through the service proxy with
exactly this name, which the Role grants.
*/}}
{{- define "fsagent.langfuseProxyName" -}}
{{- with .Values.langfuse.baseUrl }}
{{- $u := urlParse . }}
{{- $hostport := splitList ":" $u.host }}
{{- $host := first $hostport }}
{{- $port := ternary (last $hostport) (ternary "443" "80" (eq $u.scheme "https")) (gt (len $hostport) 1) }}
{{- $labels := splitList "." $host }}
{{- if or (eq (len $labels) 1) (and (ge (len $labels) 2) (eq (index $labels 1) $.Release.Namespace) (or (eq (len $labels) 2) (eq (index $labels 2) "svc"))) }}
{{- printf "%s:%s" (first $labels) $port }}
{{- end }}
{{- end }}
{{- end }}
