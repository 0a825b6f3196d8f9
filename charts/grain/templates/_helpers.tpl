{{/*
Names and labels shared by every template of the grain chart (and by templates/rbac.yaml).
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "grain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else RELEASE when it already
contains the chart name, else RELEASE-CHART. Kept to 54 characters so that suffixes such
as "-operator" still fit the 63-character limit of names.
*/}}
{{- define "grain.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "grain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods (never change them on upgrade). */}}
{{- define "grain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "grain.labels" -}}
helm.sh/chart: {{ include "grain.chart" . }}
{{ include "grain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: grain
{{- end }}

{{/* The operator's ServiceAccount name; templates/rbac.yaml binds its roles to it. */}}
{{- define "grain.serviceAccountName" -}}
{{- printf "%s-operator" (include "grain.fullname" .) }}
{{- end }}

{{/* The image reference: repository:tag, the tag defaulting to the appVersion. */}}
{{- define "grain.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The namespaces the operator watches, as a comma-separated list; empty means all namespaces.
With rbac.namespaced and no operator.watchNamespaces, the release namespace alone.
*/}}
{{- define "grain.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- join "," .Values.operator.watchNamespaces }}
{{- else if .Values.rbac.namespaced }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}
