output "backup_store" {
  description = "The --backup-store of etcd-manager and etcd-manager-ctl."
  value       = local.backup_store
}

output "seeds" {
  description = "The static seed list every manager uses."
  value       = local.seeds
}

output "master_private_ips" {
  description = "Private address of the master in each zone."
  value       = { for zone, m in local.masters : zone => m.private_ip }
}

output "instance_ids" {
  description = "Instance of the master in each zone."
  value       = { for zone, i in aws_instance.master : zone => i.id }
}

output "data_volume_ids" {
  description = "EBS data volume of the master in each zone."
  value       = { for zone, v in aws_ebs_volume.data : zone => v.id }
}

output "security_group_id" {
  description = "Security group of the masters (add kube-apiserver's own rules to it)."
  value       = aws_security_group.master.id
}

output "bucket_name" {
  description = "The backup bucket."
  value       = aws_s3_bucket.backups.id
}
