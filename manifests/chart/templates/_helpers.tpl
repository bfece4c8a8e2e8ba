{{/*
Labels Helm adds on top of the kustomize base's. Selectors and pod labels stay exactly the
base's (app.kubernetes.io/name), so a chart install and a kustomize install select alike.
*/}}
{{- define "kube-prefetch.helmLabels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "kube-prefetch.image" -}}
{{ printf "%s:%s" .repository .tag }}
{{- end }}

{{/* nodeSelector, tolerations and priorityClassName of a pod, when set. */}}
{{- define "kube-prefetch.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* The webhook Service's DNS names: the serving certificate's SANs. */}}
{{- define "kube-prefetch.webhookDNSNames" -}}
- prefetch-webhook.{{ .Release.Namespace }}.svc
- prefetch-webhook.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}

{{/* A webhook's clientConfig: the Service, and the caBundle unless cert-manager injects it. */}}
{{- define "kube-prefetch.clientConfig" -}}
clientConfig:
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
  service:
    name: prefetch-webhook
    namespace: {{ .namespace }}
    path: {{ .path }}
    port: 443
{{- end }}
