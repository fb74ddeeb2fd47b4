// sendmessage: post the message's `data` to every connection in the table through the
// API Gateway management API, dropping the ones that are gone (the SendMessage function
// of AWS's simple WebSocket chat sample, AWS SDK v3). The changes: the connection table is
// the Redis set TABLE_NAME on REDIS_URL, not a DynamoDB table; the endpoint comes from
// APIGW_ENDPOINT when set (the gateway's send-back listener), else it is AWS's
// https://{domainName}/{stage}; a stale id is recognised by the status of the SDK's error
// ($metadata.httpStatusCode, where SDK v3 keeps it) and that id is the one deleted.
// Region and keys come from the environment (AWS_REGION, AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY), as Lambda provides them.
import {
  ApiGatewayManagementApiClient,
  PostToConnectionCommand,
} from '@aws-sdk/client-apigatewaymanagementapi';
import { createClient } from 'redis';

const { TABLE_NAME, REDIS_URL } = process.env;

const redis = createClient({ url: REDIS_URL });
redis.on('error', (err) => console.log(`Redis: ${err.message}`));
await redis.connect();

export const handler = async (event) => {
  let connectionIds;
  try {
    connectionIds = await redis.sMembers(TABLE_NAME);
  } catch (e) {
    return { statusCode: 500, body: e.stack };
  }

  const apigwManagementApi = new ApiGatewayManagementApiClient({
    endpoint:
      process.env.APIGW_ENDPOINT ||
      `https://${event.requestContext.domainName}/${event.requestContext.stage}`,
  });

  const postData = JSON.parse(event.body).data;

  const postCalls = connectionIds.map(async (connectionId) => {
    try {
      const postCmd = new PostToConnectionCommand({ ConnectionId: connectionId, Data: postData });
      await apigwManagementApi.send(postCmd);
    } catch (e) {
      if (e.$metadata?.httpStatusCode === 410) {
        console.log(`Found stale connection, deleting ${connectionId}`);
        await redis.sRem(TABLE_NAME, connectionId);
      } else {
        throw e;
      }
    }
  });

  try {
    await Promise.all(postCalls);
  } catch (e) {
    return { statusCode: 500, body: e.stack };
  }

  return { statusCode: 200, body: 'Data sent.' };
};
